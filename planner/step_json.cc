// JSON step descriptions -> ZebraStepSpec / EpStepSpec, and results -> JSON
// (format in step_json.h).
#include "planner/step_json.h"

#include <initializer_list>
#include <optional>

#include "common/error.h"
#include "planner/cost_model.h"

namespace hetermoe::planner {
namespace {

using nlohmann::json;

// Where a value sits, for messages: "steps.json: [2].attention.forward: ...".
struct At {
  std::string source;
  std::string path;
  At Key(const std::string& key) const { return {source, path + (path.empty() ? "" : ".") + key}; }
  At Index(size_t i) const { return {source, path + "[" + std::to_string(i) + "]"}; }
  [[noreturn]] void Fail(const std::string& problem) const {
    throw Error(source + ": " + (path.empty() ? "" : path + ": ") + problem);
  }
};

void RequireObject(const json& j, const At& at) {
  if (!j.is_object()) at.Fail("expected an object");
}

void CheckKeys(const json& j, std::initializer_list<const char*> allowed, const At& at) {
  for (const auto& [key, value] : j.items()) {
    bool known = false;
    for (const char* a : allowed) known = known || key == a;
    if (!known) at.Key(key).Fail("unknown key");
  }
}

double NonNegative(const json& j, const At& at, const char* what) {
  if (!j.is_number()) at.Fail(std::string("expected ") + what);
  const double x = j.get<double>();
  if (!(x >= 0)) at.Fail("must be >= 0");
  return x;
}

double Seconds(const json& j, const At& at) { return NonNegative(j, at, "a number of seconds"); }

double OptionalSeconds(const json& j, const char* key, const At& at) {
  return j.contains(key) ? Seconds(j[key], at.Key(key)) : 0.0;
}

double RequiredSeconds(const json& j, const char* key, const At& at) {
  if (!j.contains(key)) at.Key(key).Fail("missing");
  return Seconds(j[key], at.Key(key));
}

int PositiveInt(const json& j, const char* key, const At& at) {
  if (!j.contains(key)) at.Key(key).Fail("missing");
  if (!j[key].is_number_integer() || j[key].get<long long>() < 1 || j[key].get<long long>() > 1'000'000) {
    at.Key(key).Fail("expected a positive integer");
  }
  return j[key].get<int>();
}

PassSeconds Pass(const json& j, const At& at) {
  RequireObject(j, at);
  CheckKeys(j, {"forward", "backward"}, at);
  return {RequiredSeconds(j, "forward", at), RequiredSeconds(j, "backward", at)};
}

GradientSync Sync(const json& j, const At& at) {
  RequireObject(j, at);
  CheckKeys(j, {"head", "layer", "embedding"}, at);
  return {OptionalSeconds(j, "head", at), OptionalSeconds(j, "layer", at), OptionalSeconds(j, "embedding", at)};
}

// One value for every layer, or a list of `layers` values.
template <typename T, typename Parse>
std::vector<T> PerLayer(const json& j, int layers, const At& at, Parse parse) {
  if (!j.is_array()) return std::vector<T>(static_cast<size_t>(layers), parse(j, at));
  if (j.size() != static_cast<size_t>(layers)) {
    at.Fail("expected " + std::to_string(layers) + " entries (one per layer), got " + std::to_string(j.size()));
  }
  std::vector<T> out;
  for (size_t i = 0; i < j.size(); ++i) out.push_back(parse(j[i], at.Index(i)));
  return out;
}

// A transfer: seconds, or {bytes, peers} priced by the link.
double Transfer(const json& j, const std::optional<LinkModel>& link, const At& at) {
  if (j.is_number()) return Seconds(j, at);
  RequireObject(j, at);
  CheckKeys(j, {"bytes", "peers"}, at);
  if (!link) at.Fail("a transfer in bytes needs the step's `link` (latency_seconds, bytes_per_second)");
  if (!j.contains("bytes")) at.Key("bytes").Fail("missing");
  const double bytes = NonNegative(j["bytes"], at.Key("bytes"), "a number of bytes");
  const int peers = j.contains("peers") ? PositiveInt(j, "peers", at) : 1;
  return link->Seconds(bytes, peers);
}

std::optional<LinkModel> Link(const json& j, const At& at) {
  if (!j.contains("link")) return std::nullopt;
  const At where = at.Key("link");
  RequireObject(j["link"], where);
  CheckKeys(j["link"], {"latency_seconds", "bytes_per_second"}, where);
  LinkModel link;
  link.latency_seconds = RequiredSeconds(j["link"], "latency_seconds", where);
  if (!j["link"].contains("bytes_per_second")) where.Key("bytes_per_second").Fail("missing");
  link.bytes_per_second = NonNegative(j["link"]["bytes_per_second"], where.Key("bytes_per_second"), "bytes per second");
  if (link.bytes_per_second <= 0) where.Key("bytes_per_second").Fail("must be > 0");
  return link;
}

ZebraStepSpec ZebraSpec(const json& j, const At& at) {
  CheckKeys(j,
            {"schedule", "label", "layers", "micro_batches", "link", "attention", "head", "expert_rank",
             "offloaded_experts", "dispatch", "combine", "dispatch_backward", "combine_backward", "attention_sync",
             "expert_sync", "offloaded_expert_sync", "attention_optimizer", "expert_optimizer"},
            at);
  ZebraStepSpec s;
  s.layers = PositiveInt(j, "layers", at);
  s.micro_batches = PositiveInt(j, "micro_batches", at);
  for (const char* key : {"attention", "expert_rank", "dispatch", "combine"}) {
    if (!j.contains(key)) at.Key(key).Fail("missing");
  }
  const std::optional<LinkModel> link = Link(j, at);
  s.attention = Pass(j["attention"], at.Key("attention"));
  s.head = OptionalSeconds(j, "head", at);
  s.expert_rank = PerLayer<PassSeconds>(j["expert_rank"], s.layers, at.Key("expert_rank"), Pass);
  s.offloaded_experts = j.contains("offloaded_experts")
                            ? PerLayer<PassSeconds>(j["offloaded_experts"], s.layers, at.Key("offloaded_experts"), Pass)
                            : std::vector<PassSeconds>(static_cast<size_t>(s.layers));
  auto transfer = [&](const json& t, const At& where) { return Transfer(t, link, where); };
  s.dispatch = PerLayer<double>(j["dispatch"], s.layers, at.Key("dispatch"), transfer);
  s.combine = PerLayer<double>(j["combine"], s.layers, at.Key("combine"), transfer);
  if (j.contains("dispatch_backward"))
    s.dispatch_backward = PerLayer<double>(j["dispatch_backward"], s.layers, at.Key("dispatch_backward"), transfer);
  if (j.contains("combine_backward"))
    s.combine_backward = PerLayer<double>(j["combine_backward"], s.layers, at.Key("combine_backward"), transfer);
  if (j.contains("attention_sync")) s.attention_sync = Sync(j["attention_sync"], at.Key("attention_sync"));
  if (j.contains("expert_sync")) s.expert_sync = PerLayer<double>(j["expert_sync"], s.layers, at.Key("expert_sync"), Seconds);
  if (j.contains("offloaded_expert_sync")) {
    s.offloaded_expert_sync =
        PerLayer<double>(j["offloaded_expert_sync"], s.layers, at.Key("offloaded_expert_sync"), Seconds);
  }
  s.attention_optimizer = OptionalSeconds(j, "attention_optimizer", at);
  s.expert_optimizer = OptionalSeconds(j, "expert_optimizer", at);
  return s;
}

EpStepSpec EpSpec(const json& j, const At& at) {
  CheckKeys(j, {"schedule", "label", "layers", "micro_batches", "link", "ranks", "all_to_all"}, at);
  EpStepSpec s;
  s.layers = PositiveInt(j, "layers", at);
  s.micro_batches = PositiveInt(j, "micro_batches", at);
  const std::optional<LinkModel> link = Link(j, at);
  if (!j.contains("all_to_all")) at.Key("all_to_all").Fail("missing");
  s.all_to_all = Transfer(j["all_to_all"], link, at.Key("all_to_all"));
  const At ranks = at.Key("ranks");
  if (!j.contains("ranks") || !j["ranks"].is_array() || j["ranks"].empty()) ranks.Fail("expected a list of ranks");
  for (size_t i = 0; i < j["ranks"].size(); ++i) {
    const json& r = j["ranks"][i];
    const At where = ranks.Index(i);
    RequireObject(r, where);
    CheckKeys(r, {"kind", "attention", "experts", "head", "sync", "optimizer"}, where);
    for (const char* key : {"attention", "experts"}) {
      if (!r.contains(key)) where.Key(key).Fail("missing");
    }
    EpRankSpec rank;
    rank.kind = r.contains("kind") && r["kind"].is_string() ? r["kind"].get<std::string>() : std::to_string(i);
    rank.attention = Pass(r["attention"], where.Key("attention"));
    if (r["experts"].is_array()) {
      rank.experts_by_layer = PerLayer<PassSeconds>(r["experts"], s.layers, where.Key("experts"), Pass);
    } else {
      rank.experts = Pass(r["experts"], where.Key("experts"));
    }
    rank.head = OptionalSeconds(r, "head", where);
    if (r.contains("sync")) rank.sync = Sync(r["sync"], where.Key("sync"));
    rank.optimizer = OptionalSeconds(r, "optimizer", where);
    s.ranks.push_back(rank);
  }
  return s;
}

}  // namespace

StepRequest StepRequestFromJson(const json& j, const std::string& source, const std::string& path) {
  const At at{source, path};
  RequireObject(j, at);
  StepRequest request;
  if (j.contains("label")) {
    if (!j["label"].is_string()) at.Key("label").Fail("expected a string");
    request.label = j["label"].get<std::string>();
  }
  const At schedule = at.Key("schedule");
  if (!j.contains("schedule") || !j["schedule"].is_string()) schedule.Fail("expected zebra, sequential or ep");
  const std::string name = j["schedule"].get<std::string>();
  const std::optional<Schedule> kind = ScheduleFromName(name);
  if (!kind) schedule.Fail("expected zebra, sequential or ep, got '" + name + "'");
  request.schedule = *kind;
  if (*kind == Schedule::kEp) {
    request.ep = EpSpec(j, at);
  } else {
    request.zebra = ZebraSpec(j, at);
  }
  return request;
}

StepGraph BuildStep(const StepRequest& request) {
  switch (request.schedule) {
    case Schedule::kZebra: return BuildZebraStep(request.zebra);
    case Schedule::kSequential: return BuildSequentialStep(request.zebra);
    case Schedule::kEp: return BuildEpStep(request.ep);
  }
  throw Error("simulator: unknown schedule");
}

json TimelineToJson(const SimulationResult& sim) {
  json resources = json::array();
  for (const ResourceTimeline& r : sim.resources) {
    json intervals = json::array();
    for (const Interval& i : r.intervals) {
      intervals.push_back({{"op", OpKindName(i.label.kind)},
                           {"layer", i.label.layer},
                           {"micro_batch", i.label.micro_batch},
                           {"backward", i.label.backward},
                           {"start", i.start},
                           {"end", i.end}});
    }
    resources.push_back({{"resource", r.name}, {"busy_seconds", r.busy_seconds}, {"intervals", intervals}});
  }
  return resources;
}

json SimulationToJson(const StepRequest& request, const SimulationResult& sim, bool with_timeline) {
  json busy = json::object();
  for (const ResourceTimeline& r : sim.resources) busy[r.name] = r.busy_seconds;
  json j = {{"label", request.label},
            {"schedule", ScheduleName(request.schedule)},
            {"step_seconds", sim.step_seconds},
            {"busy", busy}};
  if (with_timeline) j["timeline"] = TimelineToJson(sim);
  return j;
}

}  // namespace hetermoe::planner
