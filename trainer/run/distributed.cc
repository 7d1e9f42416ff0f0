#include "trainer/run/distributed.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "common/error.h"
#include "common/file_bytes.h"
#include "planner/links_json.h"
#include "planner/asym_ea.h"
#include "trainer/backend/backend.h"
#include "trainer/parallel/engine.h"
#include "trainer/parallel/launcher.h"
#include "trainer/parallel/profiler.h"

namespace hetermoe::run {
namespace {

// Every rank of the world, for a group over all of them.
std::vector<int> AllRanks(const comm::World& world) {
  std::vector<int> all(world.size());
  for (int r = 0; r < world.size(); ++r) all[r] = r;
  return all;
}

int WorldSizeOf(const RunConfig& rc) {
  return rc.parallel.groups * (rc.parallel.attention_ranks + rc.parallel.expert_ranks);
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v)
    throw Error(std::string("parallel.launch env: environment variable ") + name +
                " is not set (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are required)");
  return v;
}

int EnvInt(const char* name) {
  const std::string v = Env(name);
  try {
    size_t used = 0;
    const int x = std::stoi(v, &used);
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw Error(std::string("environment variable ") + name + "=\"" + v + "\" is not an integer");
}

std::string ListenAddress(const std::string& master) {
  if (const char* v = std::getenv("HETERMOE_LISTEN_ADDR"); v && *v) return v;
  if (const char* v = std::getenv("POD_IP"); v && *v) return v;
  if (master == "127.0.0.1" || master == "localhost") return "127.0.0.1";
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  return host;
}

std::string TracePart(const std::string& path, int rank) {
  return path + ".rank-" + std::to_string(rank) + ".json";
}

// Asym-EA `auto`: every rank profiles its side, the world agrees on the
// slowest measurement of each kind, and everyone runs Algorithm 1 on the same
// numbers, so all ranks derive the same placement.
// The rank's device, as train.device and train.precision ask.
backend::BackendOptions DeviceOptions(const RunConfig& rc) {
  backend::BackendOptions o;
  o.device = rc.train.device;
  o.precision = rc.train.precision;
  o.loss_scale_init = rc.train.loss_scale_init;
  // The device runs AdamW itself when the optimizer step stays on the GPU.
  o.adamw = optim::AdamWOptions{rc.train.beta1, rc.train.beta2, rc.train.eps, rc.train.weight_decay};
  return o;
}

std::vector<int> AutoAsymEa(const RunConfig& rc, const io::MixtralConfig& config,
                            const model::ParameterLayout& layout, comm::World& world,
                            const parallel::Emulation& em, bool attention_kind) {
  const auto& p = rc.parallel;
  if (p.schedule == "ep") return {};
  const int64_t per = rc.train.global_batch / rc.train.micro_batches;
  const int64_t held = config.num_local_experts / p.expert_ranks;
  // Measured on the device the run trains on, with random weights: the
  // profile runs layer 0 only, so the other layers' experts are left out.
  std::set<int64_t> later_experts;
  for (size_t l = 1; l < layout.layers.size(); ++l)
    for (const model::ExpertOffsets& e : layout.layers[l].experts) later_experts.insert({e.w1, e.w2, e.w3});
  std::vector<bool> keep;
  for (const model::TensorSlot& t : layout.tensors()) keep.push_back(!later_experts.count(t.offset));
  const model::ParameterLayout profiled = layout.Subset(keep);
  std::vector<float> params(profiled.total()), grads(profiled.total());
  model::InitParameters(layout, config.initializer_range, 1, profiled, params.data());
  const auto device = backend::MakeStageDevice(config, profiled, DeviceOptions(rc), params.data(), grads.data());
  std::vector<size_t> tensors(profiled.tensors().size());
  for (size_t i = 0; i < tensors.size(); ++i) tensors[i] = i;
  device->SetParams(params.data(), tensors);
  parallel::LayerTimes t =
      attention_kind ? parallel::ProfileAttentionRank(*device, config, per, rc.train.seq_len, p.attention_ranks,
                                                  em.attention, em.experts)
                     : parallel::ProfileExpertRank(*device, config, per, rc.train.seq_len, p.attention_ranks, held,
                                               em.experts);
  auto all = world.Group("profile", AllRanks(world));
  // Each rank fills its own three slots; one sum gathers them all, then the
  // slowest measurement of each kind counts (only one side measures each).
  const int W = world.size();
  std::vector<double> gathered(3 * W, 0.0);
  gathered[3 * world.rank() + 0] = t.attention_seconds;
  gathered[3 * world.rank() + 1] = t.expert_rank_seconds;
  gathered[3 * world.rank() + 2] = t.offloaded_expert_seconds;
  all->AllReduceSum(gathered.data(), gathered.size());
  std::vector<double> maxed(3, 0.0);
  for (int r = 0; r < W; ++r)
    for (int i = 0; i < 3; ++i) maxed[i] = std::max(maxed[i], gathered[3 * r + i]);
  planner::AsymEaInputs in;
  in.layers = static_cast<int>(config.num_hidden_layers);
  in.experts_per_layer = static_cast<int>(config.num_local_experts);
  in.attention_ranks = p.attention_ranks;
  in.expert_ranks = p.expert_ranks;
  in.attention_seconds = maxed[0];
  in.expert_rank_seconds = maxed[1];
  in.offloaded_expert_seconds = maxed[2];
  if (!planner::AsymEaShapeOk(p.attention_ranks, p.expert_ranks)) {
    if (world.rank() == 0)
      std::fprintf(stderr, "asym_ea auto: %d attention and %d expert ranks: neither divides the other; no experts moved\n",
                   p.attention_ranks, p.expert_ranks);
    return {};
  }
  // Algorithm 1 leaves every expert rank at least one expert per layer.
  const planner::AsymEaResult r = planner::AssignAsymmetricExperts(in);
  if (world.rank() == 0) {
    std::string list;
    for (int o : r.offloaded) list += (list.empty() ? "" : ", ") + std::to_string(o);
    std::fprintf(stderr, "asym_ea auto: T_A %.2f ms, T_EE %.2f ms, T_EA %.2f ms -> experts moved per layer [%s]\n",
                 maxed[0] * 1e3, maxed[1] * 1e3, maxed[2] * 1e3, list.c_str());
  }
  return r.offloaded;
}

// The placement the run file's parallel section gives, with `offloaded`
// experts per layer moved to attention ranks (Asym-EA).
parallel::Placement RunFilePlacement(const RunConfig& rc, const io::MixtralConfig& config,
                                     const std::vector<int>& offloaded) {
  const auto& p = rc.parallel;
  return parallel::MakePlacement(ParseSchedule(p.schedule), p.attention_ranks, p.expert_ranks, p.groups,
                                 static_cast<int>(config.num_hidden_layers), config.num_local_experts,
                                 static_cast<int>(rc.train.micro_batches), offloaded);
}

// Asym-EA's offloads known before start-up (a list; auto measures them later).
// Each global rank's group at one level of the hierarchy: rank / `per`, or
// else the ranks with the same name share a group, numbered in rank order
// (the names' 32-bit FNV-1a hashes, in two exact 16-bit halves, summed over
// the world, so every rank numbers them alike).
std::vector<int> GroupsOfRanks(int per, const std::string& name, comm::World& world, const char* level) {
  const int n = world.size();
  std::vector<int> group(n);
  if (per > 0) {
    for (int r = 0; r < n; ++r) group[r] = r / per;
    return group;
  }
  uint32_t h = 2166136261u;
  for (unsigned char ch : name) h = (h ^ ch) * 16777619u;
  std::vector<double> halves(2 * static_cast<size_t>(n), 0.0);
  halves[2 * world.rank()] = h >> 16;
  halves[2 * world.rank() + 1] = h & 0xffff;
  world.Group(std::string(level) + "-names", AllRanks(world))->AllReduceSum(halves.data(), halves.size());
  std::vector<std::pair<double, double>> seen;
  for (int r = 0; r < n; ++r) {
    const std::pair<double, double> key{halves[2 * r], halves[2 * r + 1]};
    const auto it = std::find(seen.begin(), seen.end(), key);
    group[r] = static_cast<int>(it - seen.begin());
    if (it == seen.end()) seen.push_back(key);
  }
  return group;
}

std::string NodeName() {
  if (const char* v = std::getenv("HETERMOE_NODE_NAME"); v && *v) return v;
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  return host;
}

// Each global rank's node: rank / parallel.ranks_per_node, or else the
// ranks that share a node name (HETERMOE_NODE_NAME, which pods get from the
// node they run on, else the host name) share a node.
std::vector<int> NodesOfRanks(const RunConfig& rc, comm::World& world) {
  return GroupsOfRanks(rc.parallel.ranks_per_node, NodeName(), world, "node");
}

// dedup switch: each global rank's switch (the level below the node):
// rank / parallel.ranks_per_switch, or else the ranks of one node with the
// same HETERMOE_SWITCH_NAME. Empty when neither is given.
std::vector<int> SwitchesOfRanks(const RunConfig& rc, comm::World& world) {
  if (rc.parallel.ranks_per_switch > 0) return GroupsOfRanks(rc.parallel.ranks_per_switch, "", world, "switch");
  const char* v = std::getenv("HETERMOE_SWITCH_NAME");
  std::vector<double> given = {v && *v ? 1.0 : 0.0};
  world.Group("switch-given", AllRanks(world))->AllReduceSum(given.data(), 1);
  if (given[0] != world.size()) return {};  // SetDedup names what is missing
  return GroupsOfRanks(0, NodeName() + "/" + v, world, "switch");
}

parallel::DedupDepth DedupDepthOf(const std::string& name) {
  if (name == "off") return parallel::DedupDepth::kOff;
  if (name == "node") return parallel::DedupDepth::kNode;
  if (name == "switch") return parallel::DedupDepth::kSwitch;
  if (name == "auto") return parallel::DedupDepth::kAuto;
  return parallel::DedupDepth::kRank;
}

// parallel.links_profile, read on every rank (the same file: a volume or the run's image).
std::optional<planner::MeasuredLinks> LinksProfile(const RunConfig& rc) {
  const std::string& path = rc.parallel.links_profile;
  if (path.empty()) return std::nullopt;
  std::string text;
  try {
    text = io::ReadFileBytes(path);
  } catch (const Error& e) {
    throw Error(std::string("parallel.links_profile: ") + e.what());
  }
  return planner::LinksFromJson(text, "parallel.links_profile " + path);
}

// The links dedup auto used, for the planner (hetermoe-plan --links) and
// later runs (parallel.links_profile): written whole, then renamed into place.
void WriteLinks(const planner::MeasuredLinks& links, const std::string& dir) {
  std::filesystem::create_directories(dir);
  const std::string path = dir + "/links.json", tmp = path + ".tmp";
  const std::string text = planner::LinksToJson(links);
  io::FileWriter out(tmp);
  out.Write(text.data(), text.size());
  out.Finish();
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw Error(path + ": cannot rename into place: " + ec.message());
}

std::vector<int> ListedOffloads(const RunConfig& rc) {
  return rc.parallel.asym_ea == "list" ? rc.parallel.asym_ea_layers : std::vector<int>{};
}

// The operator's plan (HETERMOE_PLAN, plan.json) against the placement this
// rank derived from its run file: a rank never trains a shape other than the
// one its job was planned and scheduled for. With Asym-EA "auto" the experts
// moved at start-up are measured, so only the rest is compared.
void CheckOperatorPlan(const std::string& path, const parallel::Placement& placement, int rank, bool asym_auto) {
  std::ifstream in(path);
  if (!in) throw Error("HETERMOE_PLAN " + path + ": cannot open the job's plan");
  const auto plan = nlohmann::json::parse(in, nullptr, false);
  const auto mine = nlohmann::json::parse(placement.ToJson());
  const std::string where = "HETERMOE_PLAN " + path + ": ";
  if (plan.is_discarded() || !plan.is_object() || !plan.contains("engine") || !plan["engine"].is_object())
    throw Error(where + "not a plan.json with an \"engine\" placement");
  const auto& planned = plan["engine"];
  for (const char* key : {"schedule", "groups", "ranks_per_group", "attention_per_group", "micro_batches"})
    if (planned.value(key, nlohmann::json()) != mine[key])
      throw Error(where + "the plan's " + key + " is " + planned.value(key, nlohmann::json()).dump() +
                  " but this run file gives " + mine[key].dump());
  if (!planned.contains("ranks") || !planned["ranks"].is_array() || planned["ranks"].size() != mine["ranks"].size())
    throw Error(where + "the plan's rank list does not match WORLD_SIZE=" + std::to_string(mine["ranks"].size()));
  const auto& want = planned["ranks"][rank];
  const auto& have = mine["ranks"][rank];
  if (want.value("role", "") != have["role"] || want.value("group", -1) != have["group"] ||
      want.value("micro_batches", nlohmann::json()) != have["micro_batches"])
    throw Error(where + "rank " + std::to_string(rank) + " is planned as " + want.dump() + " but would run as " +
                have.dump());
  if (!asym_auto && want.value("experts", nlohmann::json()) != have["experts"])
    throw Error(where + "rank " + std::to_string(rank) + " is planned to hold experts " +
                want.value("experts", nlohmann::json()).dump() + " per layer but would hold " + have["experts"].dump());
  if (const char* role = std::getenv("HETERMOE_ROLE"); role && *role && have["role"] != role)
    throw Error("HETERMOE_ROLE=" + std::string(role) + " but rank " + std::to_string(rank) + " is an " +
                have["role"].get<std::string>() + " rank in this run");
}

}  // namespace

std::unique_ptr<DistributedRun> JoinDistributedRun(const RunConfig& rc, const io::MixtralConfig& config,
                                                   const model::ParameterLayout& layout,
                                                   const TrainOptions& options) {
  const auto& p = rc.parallel;
  auto run = std::make_unique<DistributedRun>();
  comm::RendezvousOptions ro;
  ro.rank = EnvInt("RANK");
  ro.world_size = EnvInt("WORLD_SIZE");
  ro.master_addr = Env("MASTER_ADDR");
  ro.master_port = EnvInt("MASTER_PORT");
  ro.listen_addr = ListenAddress(ro.master_addr);
  ro.timeout = std::chrono::milliseconds(static_cast<int64_t>(p.timeout_seconds * 1000));
  const int expected = WorldSizeOf(rc);
  if (ro.world_size != expected)
    throw Error("WORLD_SIZE=" + std::to_string(ro.world_size) + " but " + rc.source +
                "'s parallel section needs " + std::to_string(p.groups) + " x (" +
                std::to_string(p.attention_ranks) + " + " + std::to_string(p.expert_ranks) +
                ") = " + std::to_string(expected) + " ranks");
  run->rank = ro.rank;
  run->world_size = ro.world_size;
  // Checked before meeting the others: a wrong plan fails fast, not after a timeout.
  if (const char* plan = std::getenv("HETERMOE_PLAN"); plan && *plan) {
    CheckOperatorPlan(plan, RunFilePlacement(rc, config, ListedOffloads(rc)), ro.rank, p.asym_ea == "auto");
  }

  run->world = std::make_unique<comm::World>(ro);
  const bool attention_kind = (ro.rank % (p.attention_ranks + p.expert_ranks)) < p.attention_ranks;
  parallel::Emulation em;
  em.attention = attention_kind ? rc.emulate.attention_rank_attention : rc.emulate.expert_rank_attention;
  em.experts = attention_kind ? rc.emulate.attention_rank_experts : rc.emulate.expert_rank_experts;
  // The emulated device of this rank's node (a local cluster's "V100"),
  // over the run file's per-role factors.
  if (const char* v = std::getenv("HETERMOE_EMULATE"); v && *v) {
    const EmulateFactors f = ParseEmulateFactors(v, "HETERMOE_EMULATE");
    em.attention = f.attention;
    em.experts = f.experts;
  }
  em.inter_node_bytes_per_second = rc.emulate.inter_node_gbps * 1e9 / 8;
  em.intra_node_bytes_per_second = rc.emulate.intra_node_gbps * 1e9 / 8;
  em.link_latency_seconds = rc.emulate.latency_us * 1e-6;

  std::vector<int> offloaded = ListedOffloads(rc);
  if (p.asym_ea == "auto") offloaded = AutoAsymEa(rc, config, layout, *run->world, em, attention_kind);
  run->placement = RunFilePlacement(rc, config, offloaded);

  if (!options.trace_path.empty())
    run->tracer = std::make_unique<parallel::Tracer>(
        ro.rank, run->placement.IsAttention(ro.rank) ? "attention" : "expert");
  auto engine = std::make_unique<parallel::DistributedBackend>(
      config, layout, run->placement, run->world.get(),
      DeviceOptions(rc).adamw, em,
      run->tracer.get(),
      [&](const model::ParameterLayout& owned, float* params, float* grads) {
        return backend::MakeStageDevice(config, owned, DeviceOptions(rc), params, grads);
      },
      rc.train.zero == 1);
  const std::vector<int> nodes = NodesOfRanks(rc, *run->world);
  const std::vector<int> switches = p.dedup == "switch" ? SwitchesOfRanks(rc, *run->world) : std::vector<int>{};
  const std::string dedup_line = engine->SetDedup(DedupDepthOf(p.dedup), nodes, LinksProfile(rc), switches);
  if (ro.rank == 0 && !dedup_line.empty()) std::fprintf(stderr, "%s\n", dedup_line.c_str());
  engine->SetSwapEvery(static_cast<int>(p.swap_every));
  const std::string transport = engine->SetTransport(
      p.transport, std::chrono::milliseconds(static_cast<int64_t>(p.timeout_seconds * 1000)));
  if (const auto links = engine->Links(); links && ro.rank == 0) WriteLinks(*links, rc.output.dir);
  const int in_flight = engine->SetInFlight(p.micro_batches_in_flight);
  engine->SetRecompute(rc.train.recompute);
  const std::vector<int64_t> bytes = engine->RankStateBytes();
  run->owned = engine->OwnedTensors();
  run->engine = engine.get();
  run->backend = std::move(engine);
  if (ro.rank == 0) {
    std::fprintf(stderr, "%s", run->placement.Describe().c_str());
    std::fprintf(stderr, "rows between ranks: %s\n", transport.c_str());
    if (p.dedup == "node" || p.dedup == "auto" || p.dedup == "switch") {
      const std::vector<int>& groups = p.dedup == "switch" ? switches : nodes;
      std::string list;
      for (size_t r = 0; r < groups.size(); ++r) list += (r ? " " : "") + std::to_string(groups[r]);
      std::fprintf(stderr, "dedup: %s (the %s of ranks 0..%zu: %s)\n", p.dedup.c_str(),
                   p.dedup == "switch" ? "switches" : "nodes", groups.size() - 1, list.c_str());
    }
    if (in_flight < run->placement.micro_per_rank)
      std::fprintf(stderr, "micro-batches in flight: %d of %d per attention rank (zebra in waves)\n", in_flight,
                   run->placement.micro_per_rank);
    std::string held;
    for (size_t r = 0; r < bytes.size(); ++r) {
      char one[64];
      std::snprintf(one, sizeof one, "%s%zu %.1f MiB", r ? ", " : "", r, static_cast<double>(bytes[r]) / (1 << 20));
      held += one;
    }
    std::fprintf(stderr, "model state held per rank (parameters, gradients, AdamW moments): %s; whole model %.1f MiB\n",
                 held.c_str(), 16.0 * static_cast<double>(layout.total()) / (1 << 20));
    std::error_code ec;
    std::filesystem::create_directories(rc.output.dir, ec);
    std::ofstream(std::filesystem::path(rc.output.dir) / "plan.json") << run->placement.ToJson() << "\n";
  }
  return run;
}

void WriteTrace(const DistributedRun& run, const std::string& path) {
  if (run.tracer) run.tracer->Write(TracePart(path, run.rank));
}

TrainResult LaunchLocally(const RunConfig& rc, const TrainOptions& options) {
  if (options.argv.empty()) throw Error("parallel.launch local: the command line is unknown");
  const int world = WorldSizeOf(rc);
  {
    // Refuse an impossible shape or a bad links profile here, once, rather than in every rank.
    const io::MixtralConfig config = io::LoadMixtralConfig(rc.model.config);
    RunFilePlacement(rc, config, ListedOffloads(rc));
    LinksProfile(rc);
  }
  std::fprintf(stderr, "launching %d ranks locally (%d group(s) x %d attention + %d expert, %s)\n",
               world, rc.parallel.groups, rc.parallel.attention_ranks, rc.parallel.expert_ranks,
               rc.parallel.schedule.c_str());
  const parallel::LaunchResult launched = parallel::LaunchLocal(world, options.argv);
  if (!options.trace_path.empty()) {
    std::vector<std::string> parts;
    for (int r = 0; r < world; ++r) parts.push_back(TracePart(options.trace_path, r));
    parallel::Tracer::Merge(parts, options.trace_path);
    for (const auto& part : parts) std::filesystem::remove(part);
  }
  if (launched.stopped_by_signal != 0) {
    TrainResult stopped;
    stopped.stopped_by_signal = launched.stopped_by_signal;
    return stopped;
  }
  if (!launched.ok) throw Error(launched.message);

  // The ranks wrote the results; read back what the summary line needs.
  TrainResult result;
  result.final_dir = (std::filesystem::path(rc.output.dir) / "final").string();
  std::ifstream in(std::filesystem::path(rc.output.dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    StepMetrics m;
    m.step = j.value("step", int64_t{0});
    m.loss = j.value("loss", 0.0);
    m.tokens_per_second = j.value("tokens_per_second", 0.0);
    if (j.contains("val_loss")) m.val_loss = j.value("val_loss", 0.0);
    result.steps.push_back(m);
  }
  if (!result.steps.empty()) {
    result.last_step = result.steps.back().step;
    result.first_step = result.steps.front().step - 1;
  }
  return result;
}

}  // namespace hetermoe::run
