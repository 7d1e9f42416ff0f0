// YAML -> JSON for tests (the CRD and the examples are YAML). Plain scalars
// become null, booleans, integers or numbers when they read as such; quoted
// scalars stay strings, as YAML 1.2's core schema says.
#pragma once

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

namespace hetermoe::op::fixtures {

inline nlohmann::json YamlToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      return nullptr;
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& item : node) out.push_back(YamlToJson(item));
      return out;
    }
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& kv : node) out[kv.first.as<std::string>()] = YamlToJson(kv.second);
      return out;
    }
    case YAML::NodeType::Scalar: {
      const std::string s = node.Scalar();
      if (node.Tag() == "!") return s;  // quoted
      if (s == "null" || s == "~") return nullptr;
      if (s == "true") return true;
      if (s == "false") return false;
      try {
        size_t used = 0;
        long long i = std::stoll(s, &used);
        if (used == s.size()) return i;
        double d = std::stod(s, &used);
        if (used == s.size()) return d;
      } catch (...) {
      }
      return s;
    }
  }
  return nullptr;
}

inline std::vector<nlohmann::json> LoadYamlDocuments(const std::string& path) {
  std::vector<nlohmann::json> docs;
  for (const auto& doc : YAML::LoadAllFromFile(path))
    if (doc && !doc.IsNull()) docs.push_back(YamlToJson(doc));
  return docs;
}

}  // namespace hetermoe::op::fixtures
