#include "trainer/run/run_config.h"

#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/error.h"
#include "common/schedule.h"
#include "common/yaml_section.h"

namespace hetermoe::run {
namespace {

namespace fs = std::filesystem;

// Keys that came from --set, whose relative paths resolve against the cwd.
using OverriddenKeys = std::set<std::string>;

// Each section is read with yaml_fields::Section (common/yaml_section.h),
// which rejects keys it does not know.
using yaml_fields::Section;

void ApplyOverride(YAML::Node root, const std::string& assignment, const std::string& source,
                   OverriddenKeys* keys) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw Error("--set " + assignment + ": expected key=value (e.g. train.steps=10)");
  const std::string key = assignment.substr(0, eq);
  YAML::Node value;
  try {
    value = YAML::Load(assignment.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    throw Error("--set " + assignment + ": value is not valid YAML: " + e.msg);
  }
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string p; std::getline(ss, p, '.');) parts.push_back(p);
  // Walk with fresh handles: yaml-cpp's operator= on a Node rebinds it.
  std::vector<YAML::Node> path{root};
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node child = path.back()[parts[i]];
    if (child && !child.IsMap() && !child.IsNull())
      throw Error("--set " + assignment + ": " + parts[i] + " is not a section");
    path.push_back(child);
  }
  path.back()[parts.back()] = value;
  keys->insert(key);
  (void)source;
}

std::string ResolvePath(const std::string& p, const std::string& key, const std::string& base_dir,
                        const OverriddenKeys& overridden) {
  if (p.empty() || fs::path(p).is_absolute() || overridden.count(key)) return p;
  return (fs::path(base_dir) / p).lexically_normal().string();
}

}  // namespace

RunConfig ParseRunConfig(const std::string& yaml_text, const std::string& source,
                         const std::string& base_dir, const std::vector<std::string>& overrides) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    throw Error(source + ": malformed YAML at line " + std::to_string(e.mark.line + 1) +
                ", column " + std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
  if (root.IsNull()) root = YAML::Node(YAML::NodeType::Map);
  if (!root.IsMap()) throw Error(source + ": the run file must be a YAML mapping");
  OverriddenKeys overridden;
  for (const auto& o : overrides) ApplyOverride(root, o, source, &overridden);

  RunConfig c;
  c.source = source;
  static const std::set<std::string> kSections = {"model", "data", "train", "output", "parallel",
                                                  "emulate"};
  for (const auto& kv : root) {
    const std::string key = kv.first.as<std::string>();
    if (!kSections.count(key)) throw Error(source + ": " + key + " is not a known section");
  }

  Section model(root["model"], "model", source);
  model.Get("config", &c.model.config, true);
  model.Get("init", &c.model.init);
  model.Finish();

  Section data(root["data"], "data", source);
  if (root["data"] && root["data"]["train"] && root["data"]["train"].IsSequence()) {
    data.Get("train", &c.data.train_shards, true);
    if (c.data.train_shards.empty()) data.Fail("data.train", "must name at least one token file");
  } else {
    data.Get("train", &c.data.train, true);
    c.data.train_shards = {c.data.train};
  }
  data.Get("shuffle", &c.data.shuffle);
  data.Get("valid", &c.data.valid);
  data.Get("tokenizer", &c.data.tokenizer);
  data.Finish();

  Section train(root["train"], "train", source);
  auto& t = c.train;
  train.Get("steps", &t.steps, true);
  train.Get("global_batch", &t.global_batch, true);
  train.Get("micro_batches", &t.micro_batches);
  train.Get("seq_len", &t.seq_len, true);
  train.Get("lr", &t.lr);
  train.Get("schedule", &t.schedule);
  train.Get("warmup_steps", &t.warmup_steps);
  train.Get("min_lr", &t.min_lr);
  std::vector<double> betas{t.beta1, t.beta2};
  train.Get("betas", &betas);
  train.Get("eps", &t.eps);
  train.Get("weight_decay", &t.weight_decay);
  train.Get("grad_clip", &t.grad_clip);
  train.Get("seed", &t.seed);
  train.Get("threads", &t.threads);
  train.Get("memory_limit_mib", &t.memory_limit_mib);
  train.Get("loss_scale_init", &t.loss_scale_init);
  train.Get("zero", &t.zero);
  train.Get("recompute", &t.recompute);
  train.Get("device", &t.device);
  train.Get("precision", &t.precision);
  train.Get("eval_every", &t.eval_every);
  train.Get("eval_batches", &t.eval_batches);
  train.Finish();
  if (betas.size() != 2) train.Fail("train.betas", "must be a list of two numbers");
  t.beta1 = betas[0];
  t.beta2 = betas[1];
  if (t.steps < 1) train.Fail("train.steps", "must be >= 1");
  if (t.global_batch < 1) train.Fail("train.global_batch", "must be >= 1");
  if (t.micro_batches < 1) train.Fail("train.micro_batches", "must be >= 1");
  if (t.global_batch % t.micro_batches != 0)
    train.Fail("train.micro_batches", "(" + std::to_string(t.micro_batches) +
                                          ") must divide train.global_batch (" +
                                          std::to_string(t.global_batch) + ")");
  if (t.seq_len < 1) train.Fail("train.seq_len", "must be >= 1");
  if (t.eval_every < 0) train.Fail("train.eval_every", "must be >= 0 (0 = after the last step)");
  if (t.eval_batches < 1) train.Fail("train.eval_batches", "must be >= 1");
  if (t.eval_every > 0 && c.data.valid.empty())
    train.Fail("train.eval_every", "needs data.valid, the token file to evaluate on");
  if (!(t.lr > 0)) train.Fail("train.lr", "must be > 0");
  if (t.schedule != "constant" && t.schedule != "cosine")
    train.Fail("train.schedule", "must be constant or cosine (got \"" + t.schedule + "\")");
  if (t.warmup_steps < 0) train.Fail("train.warmup_steps", "must be >= 0");
  if (t.min_lr < 0 || t.min_lr > t.lr) train.Fail("train.min_lr", "must be in [0, train.lr]");
  for (double b : betas)
    if (!(b >= 0 && b < 1)) train.Fail("train.betas", "must be in [0, 1)");
  if (!(t.eps > 0)) train.Fail("train.eps", "must be > 0");
  if (t.weight_decay < 0) train.Fail("train.weight_decay", "must be >= 0");
  if (t.grad_clip < 0) train.Fail("train.grad_clip", "must be >= 0 (0 = off)");
  if (t.device != "auto" && t.device != "cpu" && t.device != "cuda")
    train.Fail("train.device", "must be auto, cpu or cuda (got \"" + t.device + "\")");
  if (t.precision != "fp32" && t.precision != "bf16" && t.precision != "fp16" && t.precision != "auto")
    train.Fail("train.precision", "must be fp32, bf16, fp16 or auto (got \"" + t.precision + "\")");
  if (t.threads < 0) train.Fail("train.threads", "must be >= 0 (0 = every core)");
  if (t.memory_limit_mib < 0) train.Fail("train.memory_limit_mib", "must be >= 0 (0 = no limit)");
  if (!(t.loss_scale_init >= 1)) train.Fail("train.loss_scale_init", "must be >= 1");
  if (t.recompute != "none" && t.recompute != "attention" && t.recompute != "experts" && t.recompute != "full")
    train.Fail("train.recompute", "must be none, attention, experts or full (got \"" + t.recompute + "\")");
  if (t.zero != 0 && t.zero != 1) train.Fail("train.zero", "must be 0 or 1 (ZeRO-1: dense optimizer state sharded)");

  if (root["parallel"]) {
    auto& p = c.parallel;
    p.enabled = true;
    Section parallel(root["parallel"], "parallel", source);
    parallel.Get("attention_ranks", &p.attention_ranks);
    parallel.Get("expert_ranks", &p.expert_ranks);
    parallel.Get("groups", &p.groups);
    parallel.Get("schedule", &p.schedule);
    parallel.Get("launch", &p.launch);
    parallel.Get("timeout_seconds", &p.timeout_seconds);
    parallel.Get("dedup", &p.dedup);
    if (p.dedup == "true") p.dedup = "rank";
    if (p.dedup == "false") p.dedup = "off";
    if (p.dedup != "off" && p.dedup != "rank" && p.dedup != "node" && p.dedup != "switch" && p.dedup != "auto")
      parallel.Fail("parallel.dedup",
                    "must be off, rank, node, switch or auto (or true = rank, false = off; got \"" + p.dedup + "\")");
    parallel.Get("ranks_per_node", &p.ranks_per_node);
    if (p.ranks_per_node < 0) parallel.Fail("parallel.ranks_per_node", "must be >= 0 (0 = from the node names)");
    parallel.Get("ranks_per_switch", &p.ranks_per_switch);
    if (p.ranks_per_switch < 0)
      parallel.Fail("parallel.ranks_per_switch", "must be >= 0 (0 = from the switch names)");
    if (p.ranks_per_switch > 0 && p.ranks_per_node > 0 && p.ranks_per_node % p.ranks_per_switch != 0)
      parallel.Fail("parallel.ranks_per_switch", "must divide parallel.ranks_per_node (a switch is inside a node)");
    parallel.Get("links_profile", &p.links_profile);
    if (!p.links_profile.empty() && p.dedup != "auto")
      parallel.Fail("parallel.links_profile", "is read only with dedup: auto (dedup is \"" + p.dedup + "\")");
    parallel.Get("swap_every", &p.swap_every);
    if (p.swap_every < 0) parallel.Fail("parallel.swap_every", "must be >= 0 (0 = never)");
    parallel.Get("transport", &p.transport);
    parallel.Get("micro_batches_in_flight", &p.micro_batches_in_flight);
    if (p.micro_batches_in_flight < 0)
      parallel.Fail("parallel.micro_batches_in_flight", "must be >= 0 (0 = every micro-batch at once)");
    if (p.transport != "auto" && p.transport != "nccl" && p.transport != "gloo")
      parallel.Fail("parallel.transport", "must be auto, nccl or gloo");
    const YAML::Node asym = root["parallel"]["asym_ea"];
    if (asym && asym.IsSequence()) {
      parallel.Get("asym_ea", &p.asym_ea_layers);
      p.asym_ea = "list";
      for (int o : p.asym_ea_layers)
        if (o < 0) parallel.Fail("parallel.asym_ea", "entries must be >= 0");
    } else {
      parallel.Get("asym_ea", &p.asym_ea);
      if (p.asym_ea != "auto" && p.asym_ea != "off")
        parallel.Fail("parallel.asym_ea", "must be auto, off or a list of per-layer counts");
    }
    parallel.Finish();
    if (p.attention_ranks < 1) parallel.Fail("parallel.attention_ranks", "must be >= 1");
    if (p.expert_ranks < 0) parallel.Fail("parallel.expert_ranks", "must be >= 0");
    if (p.groups < 1) parallel.Fail("parallel.groups", "must be >= 1");
    if (!ScheduleFromName(p.schedule))
      parallel.Fail("parallel.schedule", "must be zebra, sequential or ep (got \"" + p.schedule + "\")");
    if (p.schedule != "ep" && p.expert_ranks < 1)
      parallel.Fail("parallel.expert_ranks", "must be >= 1 for the " + p.schedule + " schedule");
    if (p.launch != "local" && p.launch != "env")
      parallel.Fail("parallel.launch", "must be local or env (got \"" + p.launch + "\")");
    if (!(p.timeout_seconds > 0)) parallel.Fail("parallel.timeout_seconds", "must be > 0");
  }
  if (root["emulate"]) {
    const YAML::Node em = root["emulate"];
    static const std::set<std::string> kRoles = {"attention_rank", "expert_rank", "links"};
    if (!em.IsMap()) throw Error(source + ": emulate must be a mapping");
    for (const auto& kv : em) {
      const std::string role = kv.first.as<std::string>();
      if (!kRoles.count(role)) throw Error(source + ": emulate." + role + " is not a known key");
    }
    auto role = [&](const char* name, double* attention, double* experts) {
      Section r(em[name], std::string("emulate.") + name, source);
      r.Get("attention", attention);
      r.Get("experts", experts);
      r.Finish();
      if (*attention < 1 || *experts < 1)
        r.Fail(std::string("emulate.") + name, "factors must be >= 1");
    };
    role("attention_rank", &c.emulate.attention_rank_attention, &c.emulate.attention_rank_experts);
    role("expert_rank", &c.emulate.expert_rank_attention, &c.emulate.expert_rank_experts);
    Section links(em["links"], "emulate.links", source);
    links.Get("inter_node_gbps", &c.emulate.inter_node_gbps);
    links.Get("intra_node_gbps", &c.emulate.intra_node_gbps);
    links.Get("latency_us", &c.emulate.latency_us);
    links.Finish();
    for (double v : {c.emulate.inter_node_gbps, c.emulate.intra_node_gbps, c.emulate.latency_us})
      if (v < 0) links.Fail("emulate.links", "bandwidths and latency must be >= 0 (0 = not emulated)");
  }

  Section output(root["output"], "output", source);
  output.Get("dir", &c.output.dir);
  output.Get("checkpoint_every", &c.output.checkpoint_every);
  output.Get("keep_checkpoints", &c.output.keep_checkpoints);
  output.Get("max_shard_mib", &c.output.max_shard_mib);
  output.Get("dtype", &c.output.dtype);
  output.Finish();
  if (c.output.dir.empty()) output.Fail("output.dir", "must not be empty");
  if (c.output.checkpoint_every < 0) output.Fail("output.checkpoint_every", "must be >= 0");
  if (c.output.keep_checkpoints < 0) output.Fail("output.keep_checkpoints", "must be >= 0");
  if (c.output.max_shard_mib < 0) output.Fail("output.max_shard_mib", "must be >= 0 (0 = one file)");
  if (c.output.dtype != "auto" && c.output.dtype != "fp32" && c.output.dtype != "bf16")
    output.Fail("output.dtype", "must be auto, fp32 or bf16 (got \"" + c.output.dtype + "\")");

  c.model.config = ResolvePath(c.model.config, "model.config", base_dir, overridden);
  c.model.init = ResolvePath(c.model.init, "model.init", base_dir, overridden);
  c.data.train = ResolvePath(c.data.train, "data.train", base_dir, overridden);
  for (std::string& shard : c.data.train_shards) shard = ResolvePath(shard, "data.train", base_dir, overridden);
  if (c.data.train_shards.size() > 1 || c.data.train.empty()) {  // a list: `train` names them all, for messages
    c.data.train.clear();
    for (const std::string& shard : c.data.train_shards) c.data.train += (c.data.train.empty() ? "" : ", ") + shard;
  }
  c.data.valid = ResolvePath(c.data.valid, "data.valid", base_dir, overridden);
  c.data.tokenizer = ResolvePath(c.data.tokenizer, "data.tokenizer", base_dir, overridden);
  c.output.dir = ResolvePath(c.output.dir, "output.dir", base_dir, overridden);
  c.parallel.links_profile = ResolvePath(c.parallel.links_profile, "parallel.links_profile", base_dir, overridden);
  return c;
}

RunConfig LoadRunConfig(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open run file");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string base = fs::path(path).parent_path().string();
  return ParseRunConfig(ss.str(), path, base.empty() ? "." : base, overrides);
}

EmulateFactors ParseEmulateFactors(const std::string& text, const std::string& source) {
  EmulateFactors f;
  const std::string what = source + "=\"" + text + "\": expected attention=X,experts=Y with factors >= 1";
  size_t at = 0;
  while (at <= text.size()) {
    const size_t end = std::min(text.find(',', at), text.size());
    const std::string item = text.substr(at, end - at);
    const size_t eq = item.find('=');
    if (eq == std::string::npos) throw Error(what);
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    double x = 0;
    try {
      size_t used = 0;
      x = std::stod(value, &used);
      if (used != value.size()) throw Error(what);
    } catch (const std::exception&) {
      throw Error(what);
    }
    if (!(x >= 1.0)) throw Error(what);
    if (key == "attention") f.attention = x;
    else if (key == "experts") f.experts = x;
    else throw Error(what);
    at = end + 1;
  }
  return f;
}

}  // namespace hetermoe::run
