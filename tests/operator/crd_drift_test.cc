// One source of truth: the CRD (crds/hetermoe.io_hetermoejobs.yaml) and the
// operator's types (operator/api/hetermoejob.h) must describe the same
// fields. A document holding every schema field must parse with nothing
// left over (the CRD has no field the operator ignores), every path the
// parser reads must be in the schema (the apiserver would prune it), and
// every status path the operator writes must be in the schema. The examples
// must parse and validate.
#include <filesystem>
#include <set>

#include <gtest/gtest.h>

#include "operator/api/hetermoejob.h"
#include "operator/core/validation.h"
#include "test_jobs.h"
#include "yaml_json.h"

namespace hetermoe::op {
namespace {

using nlohmann::json;

const std::string kSource = HETERMOE_SOURCE_DIR;

json Crd() { return fixtures::LoadYamlDocuments(kSource + "/crds/hetermoe.io_hetermoejobs.yaml").at(0); }
json RootSchema() { return Crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]; }

// Every field path of a schema ("spec.attention.replicas", arrays as "x[]").
void SchemaPaths(const json& schema, const std::string& path, std::set<std::string>& out) {
  if (!path.empty()) out.insert(path);
  if (schema.contains("properties"))
    for (auto it = schema["properties"].begin(); it != schema["properties"].end(); ++it)
      SchemaPaths(*it, path.empty() ? it.key() : path + "." + it.key(), out);
  if (schema.value("type", "") == "array" && schema.contains("items")) SchemaPaths(schema["items"], path + "[]", out);
}

// A value for every field: defaults, enum members and bounds where given.
json MaximalValue(const json& schema, const std::string& path) {
  if (schema.value("x-kubernetes-int-or-string", false)) return schema.value("default", json("auto"));
  if (path == "spec.model.config") return fixtures::kTinyModel;
  if (schema.contains("default") && !schema["default"].is_object()) return schema["default"];
  if (schema.contains("enum")) return schema["enum"][0];
  const std::string type = schema.value("type", "");
  if (type == "object") {
    json out = json::object();
    if (schema.contains("properties"))
      for (auto it = schema["properties"].begin(); it != schema["properties"].end(); ++it)
        out[it.key()] = MaximalValue(*it, path + "." + it.key());
    return out;
  }
  if (type == "array") return json::array({MaximalValue(schema["items"], path + "[]")});
  if (type == "integer") return schema.value("minimum", 1);
  if (type == "number") return schema.contains("minimum") ? schema["minimum"].get<double>() + 0.5 : 1.5;
  if (type == "boolean") return true;
  if (type == "string") {
    if (schema.contains("pattern")) return "8.0";  // the compute-capability fields
    if (schema.value("format", "") == "date-time") return "2025-05-20T10:00:00Z";
    return "x";
  }
  ADD_FAILURE() << path << ": schema without a type";
  return nullptr;
}

TEST(CrdDrift, EverySpecFieldIsReadAndEveryReadFieldExists) {
  json root = RootSchema();
  std::set<std::string> schema_paths;
  SchemaPaths(root["properties"]["spec"], "spec", schema_paths);
  json spec = MaximalValue(root["properties"]["spec"], "spec");
  std::set<std::string> visited;
  // Unknown keys throw: a schema field the operator does not read fails here.
  ASSERT_NO_THROW(ParseJobSpec(spec, &visited)) << spec.dump(2);
  for (const std::string& path : visited) EXPECT_TRUE(schema_paths.count(path)) << path << " is read but not in the CRD";
  for (const std::string& path : schema_paths) {
    if (path == "spec" || path.find("template.") != std::string::npos) continue;
    EXPECT_TRUE(visited.count(path)) << path << " is in the CRD but never read";
  }
}

TEST(CrdDrift, EveryStatusFieldExists) {
  json root = RootSchema();
  std::set<std::string> schema_paths;
  SchemaPaths(root["properties"]["status"], "status", schema_paths);
  std::set<std::string> visited;
  ASSERT_NO_THROW(ParseJobStatus(MaximalValue(root["properties"]["status"], "status"), &visited));
  for (const std::string& path : visited) EXPECT_TRUE(schema_paths.count(path)) << path;
  for (const std::string& path : schema_paths)
    if (path != "status") {
      EXPECT_TRUE(visited.count(path)) << path << " is never read";
    }

  // What the operator writes, with every optional set.
  JobStatus s;
  s.state = "Running";
  s.conditions.push_back({"Created", "True", "r", "m", "2025-05-20T10:00:00Z"});
  s.start_time = s.completion_time = "2025-05-20T10:00:00Z";
  s.plan = PlanSummary{};
  s.progress = Progress{1, 2, 50, 1.0, 2.0, 3.0, "2025-05-20T10:00:00Z"};
  std::function<void(const json&, const std::string&)> walk = [&](const json& j, const std::string& path) {
    EXPECT_TRUE(schema_paths.count(path)) << path << " is written but not in the CRD (the apiserver prunes it)";
    if (j.is_object())
      for (auto it = j.begin(); it != j.end(); ++it) walk(*it, path + "." + it.key());
    if (j.is_array())
      for (const json& item : j) walk(item, path + "[]");
  };
  walk(StatusToJson(s), "status");
}

TEST(CrdDrift, StructuralAndConventions) {
  json crd = Crd();
  EXPECT_EQ(crd["apiVersion"], "apiextensions.k8s.io/v1");
  EXPECT_EQ(crd["spec"]["group"], kGroup);
  EXPECT_EQ(crd["spec"]["names"]["kind"], kKind);
  EXPECT_EQ(crd["spec"]["names"]["plural"], kPlural);
  EXPECT_EQ(crd["spec"]["names"]["shortNames"], json({"hmj"}));
  EXPECT_EQ(crd["spec"]["scope"], "Namespaced");
  const json& version = crd["spec"]["versions"][0];
  EXPECT_EQ(version["name"], kVersion);
  EXPECT_TRUE(version["subresources"].contains("status"));

  std::set<std::string> all;
  SchemaPaths(RootSchema(), "", all);
  std::set<std::string> columns;
  for (const json& c : version["additionalPrinterColumns"]) {
    columns.insert(c["name"]);
    std::string path = c["jsonPath"].get<std::string>().substr(1);
    if (path.rfind("metadata.", 0) != 0) {
      EXPECT_TRUE(all.count(path)) << c["jsonPath"];
    }
  }
  EXPECT_EQ(columns, (std::set<std::string>{"State", "Attention", "Expert", "Step", "Loss", "Age"}));

  // No preserve-unknown-fields over the spec except inside pod templates;
  // every field described; every CEL rule has a message.
  std::function<void(const json&, const std::string&)> walk = [&](const json& s, const std::string& path) {
    if (s.value("x-kubernetes-preserve-unknown-fields", false)) {
      EXPECT_TRUE(path.size() > 9 && path.substr(path.size() - 9) == ".template") << path;
    }
    if (path.rfind("spec.", 0) == 0 || path.rfind("status.", 0) == 0) {
      EXPECT_TRUE(s.contains("description") || path.find("[]") != std::string::npos) << path << " has no description";
    }
    for (const json& rule : s.value("x-kubernetes-validations", json::array()))
      EXPECT_TRUE(rule.contains("rule") && rule.contains("message")) << path;
    if (s.contains("properties"))
      for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it)
        walk(*it, path.empty() ? it.key() : path + "." + it.key());
    if (s.contains("items")) walk(s["items"], path + "[]");
  };
  walk(RootSchema(), "");
}

TEST(Examples, ParseAndValidate) {
  int seen = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kSource + "/examples")) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("hetermoejob-", 0) != 0 || entry.path().extension() != ".yaml") continue;
    for (const json& doc : fixtures::LoadYamlDocuments(entry.path().string())) {
      if (doc.value("kind", "") != kKind) continue;
      ++seen;
      HeterMoEJob job;
      ASSERT_NO_THROW(job = ParseJob(doc)) << name;
      // Models from a ConfigMap are checked when the job runs.
      auto errors = ValidateSpec(job.spec, job.spec.model.config ? &*job.spec.model.config : nullptr);
      EXPECT_TRUE(errors.empty()) << name << ": " << errors.front();
    }
  }
  EXPECT_GE(seen, 3);
}

}  // namespace
}  // namespace hetermoe::op
