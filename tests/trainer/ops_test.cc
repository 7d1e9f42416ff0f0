// Unit tests of the pure pieces: dispatch plans, RoPE, schedules, the run
// file parser and the progress line. The numerics of every op against
// PyTorch are in golden_test.cc.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>

#include "common/error.h"
#include "trainer/ops/experts.h"
#include "trainer/ops/rope.h"
#include "trainer/optim/lr_schedule.h"
#include "trainer/run/progress.h"
#include "trainer/run/cpu_budget.h"
#include "trainer/run/run_config.h"

namespace hetermoe {
namespace {

TEST(DispatchPlan, GroupsRowsByExpertInTokenOrder) {
  // 4 tokens, top-2 of 3 experts; expert 2 gets nothing.
  const std::vector<int32_t> topk = {1, 0, 0, 1, 1, 0, 0, 1};
  const auto p = ops::MakeDispatchPlan(4, 2, 3, topk.data());
  EXPECT_EQ(p.counts, (std::vector<int64_t>{4, 4, 0}));
  EXPECT_EQ(p.offsets, (std::vector<int64_t>{0, 4, 8, 8}));
  EXPECT_EQ(p.token_of_row, (std::vector<int64_t>{0, 1, 2, 3, 0, 1, 2, 3}));
  for (int a = 0; a < 8; ++a) EXPECT_EQ(p.token_of_row[p.row_of[a]], a / 2);
}

TEST(DispatchPlan, GatherThenScatterAddCountsEachSlot) {
  const std::vector<int32_t> topk = {2, 0, 2, 1, 0, 2};
  const auto p = ops::MakeDispatchPlan(3, 2, 3, topk.data());
  const std::vector<float> x = {1, 2, 3, 4, 5, 6};  // 3 tokens, d = 2
  std::vector<float> xp(12), back(6, 0.0f);
  ops::DispatchGather(p, 2, x.data(), xp.data());
  ops::DispatchScatterAdd(p, 2, xp.data(), back.data());
  for (int i = 0; i < 6; ++i) EXPECT_FLOAT_EQ(back[i], 2 * x[i]);  // every token sits in 2 slots
}

TEST(Rope, InverseUndoesForward) {
  const auto table = ops::MakeRopeTable(8, 6, 10000.0f);
  std::mt19937 rng(1);
  std::normal_distribution<float> n;
  std::vector<float> x(2 * 8 * 3 * 6);
  for (auto& v : x) v = n(rng);
  auto y = x;
  ops::RopeApply(table, 16, 3, y.data(), false);
  EXPECT_NE(y, x);
  ops::RopeApply(table, 16, 3, y.data(), true);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-5f);
  // Position 0 is not rotated.
  auto z = x;
  ops::RopeApply(table, 16, 3, z.data(), false);
  for (int i = 0; i < 18; ++i) EXPECT_EQ(z[i], x[i]);
}

// rope_scaling's tables against the formulas worked by hand for hd = 8,
// theta = 1e4 (inverse frequencies 1, 0.1, 0.01, 0.001).
TEST(Rope, ScalingFollowsTransformers) {
  io::MixtralConfig c;
  c.hidden_size = 32;
  c.num_attention_heads = 4;  // hd = 8
  c.rope_theta = 10000.0;
  c.max_position_embeddings = 64;
  float af = 0;
  const std::vector<float> plain = ops::RopeInverseFrequencies(16, c, &af);
  ASSERT_EQ(plain.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(plain[i], std::pow(10.0, -i), 1e-6 * std::pow(10.0, -i));
  EXPECT_EQ(af, 1.0f);
  // linear: every frequency / factor.
  c.rope_scaling = {"linear", 2.0};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(ops::RopeInverseFrequencies(16, c, &af)[i], plain[i] / 2.0f);
  // dynamic: unchanged up to max_position_embeddings; beyond, theta grows to
  // 1e4 (2 * 128 / 64 - 1)^(8 / 6).
  c.rope_scaling = {"dynamic", 2.0};
  EXPECT_EQ(ops::RopeInverseFrequencies(64, c, &af), plain);
  const double theta = 1e4 * std::pow(3.0, 8.0 / 6.0);
  EXPECT_NEAR(ops::RopeInverseFrequencies(128, c, &af)[1], std::pow(theta, -0.25), 1e-6 * std::pow(theta, -0.25));
  // yarn, factor 4 over an original context of 16: the dims making 32 turns
  // (beta_fast) and 1 turn (beta_slow) in 16 positions are 8 ln(16 / 64 pi) /
  // 2 ln 1e4 = -1.10 -> 0 and 8 ln(16 / 2 pi) / 2 ln 1e4 = 0.41 -> 1: frequency
  // 0 kept, the others / 4; cos and sin times 0.1 ln 4 + 1.
  c.rope_scaling = {"yarn", 4.0, 16};
  const std::vector<float> yarn = ops::RopeInverseFrequencies(16, c, &af);
  EXPECT_NEAR(yarn[0], plain[0], 1e-7);
  for (int i = 1; i < 4; ++i) EXPECT_NEAR(yarn[i], plain[i] / 4, 1e-6 * plain[i]);
  EXPECT_NEAR(af, 0.1 * std::log(4.0) + 1, 1e-6);
  const ops::RopeTable table = ops::MakeRopeTable(16, c);
  EXPECT_NEAR(table.cos[0], af, 1e-6);  // position 0: cos 1, scaled
}

TEST(LrSchedule, ConstantAndWarmupCosine) {
  optim::LrSchedule s;
  s.lr = 1.0;
  EXPECT_EQ(s.At(1), 1.0);
  EXPECT_EQ(s.At(1000), 1.0);
  s.kind = optim::LrSchedule::Kind::kCosine;
  s.warmup_steps = 4;
  s.min_lr = 0.1;
  s.total_steps = 14;
  EXPECT_DOUBLE_EQ(s.At(1), 0.25);
  EXPECT_DOUBLE_EQ(s.At(4), 1.0);
  EXPECT_NEAR(s.At(9), 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * 0.5)), 1e-12);
  EXPECT_DOUBLE_EQ(s.At(14), 0.1);
  s.warmup_steps = 0;
  s.total_steps = 1;
  EXPECT_DOUBLE_EQ(s.At(1), 0.1);  // a one-step cosine run ends at the floor
}

TEST(RunConfig, DefaultsOverridesAndPaths) {
  const auto c = run::ParseRunConfig(
      "model: {config: tiny/config.json}\ndata: {train: /abs/tokens.bin}\n"
      "train: {steps: 3, global_batch: 4, micro_batches: 2, seq_len: 32}\n",
      "run.yaml", "/runs", {"train.betas=[0.8, 0.99]", "output.dir=rel/out", "train.lr=0.5"});
  EXPECT_EQ(c.model.config, "/runs/tiny/config.json");  // relative to the run file
  EXPECT_EQ(c.data.train, "/abs/tokens.bin");
  EXPECT_EQ(c.output.dir, "rel/out");                    // --set: relative to the cwd
  EXPECT_DOUBLE_EQ(c.train.beta1, 0.8);
  EXPECT_DOUBLE_EQ(c.train.beta2, 0.99);
  EXPECT_DOUBLE_EQ(c.train.lr, 0.5);
  EXPECT_EQ(c.train.schedule, "constant");
  EXPECT_EQ(c.output.checkpoint_every, 0);
}

// The run-file contract's example, verbatim: it must keep parsing.
TEST(RunConfig, TheContractExampleParses) {
  const auto c = run::ParseRunConfig(R"(model:
  config: tiny/config.json          # Hugging Face MixtralConfig
  init: tiny/model.safetensors      # optional
data:
  train: tiny/tokens.bin
train:
  steps: 3
  global_batch: 4                   # sequences per optimizer step
  micro_batches: 2                  # gradient accumulation
  seq_len: 32
  lr: 1.0e-3
  schedule: constant                # or cosine, with warmup_steps, min_lr
  betas: [0.9, 0.95]
  eps: 1.0e-8
  weight_decay: 0.1
  grad_clip: 1.0                    # 0 = off
  seed: 1234
output:
  dir: out
  checkpoint_every: 0               # 0 = only final/
)", "run.yaml", "/w", {});
  EXPECT_EQ(c.model.init, "/w/tiny/model.safetensors");
  EXPECT_EQ(c.train.steps, 3);
  EXPECT_EQ(c.train.micro_batches, 2);
  EXPECT_DOUBLE_EQ(c.train.eps, 1e-8);
  EXPECT_EQ(c.train.seed, 1234u);
  EXPECT_EQ(c.output.dir, "/w/out");
  EXPECT_FALSE(c.parallel.enabled);
}

TEST(RunConfig, ParallelAndEmulateSections) {
  const auto c = run::ParseRunConfig(
      "model: {config: c.json}\ndata: {train: t.bin}\ntrain: {steps: 1, global_batch: 4, seq_len: 8}\n"
      "parallel: {attention_ranks: 2, expert_ranks: 4, groups: 1, schedule: zebra, asym_ea: [0, 2],"
      " launch: env}\n"
      "emulate:\n  attention_rank: {attention: 1.0, experts: 1.0}\n"
      "  expert_rank:    {attention: 3.7, experts: 1.25}\n",
      "run.yaml", ".", {});
  EXPECT_TRUE(c.parallel.enabled);
  EXPECT_EQ(c.parallel.asym_ea, "list");
  EXPECT_EQ(c.parallel.asym_ea_layers, (std::vector<int>{0, 2}));
  EXPECT_DOUBLE_EQ(c.emulate.expert_rank_attention, 3.7);
  EXPECT_DOUBLE_EQ(c.emulate.expert_rank_experts, 1.25);
  // parallel.links_profile: beside the run file, and only for dedup auto.
  const std::string head = "model: {config: c.json}\ndata: {train: t.bin}\ntrain: {steps: 1, global_batch: 4, seq_len: 8}\n";
  const auto auto_links = run::ParseRunConfig(
      head + "parallel: {attention_ranks: 1, expert_ranks: 3, dedup: auto, links_profile: out/links.json}\n",
      "run.yaml", "/w", {});
  EXPECT_EQ(auto_links.parallel.links_profile, "/w/out/links.json");
  // parallel.ranks_per_switch: a switch is inside a node.
  EXPECT_EQ(run::ParseRunConfig(head + "parallel: {attention_ranks: 1, expert_ranks: 3, dedup: switch, "
                                       "ranks_per_node: 4, ranks_per_switch: 2}\n",
                                "run.yaml", "/w", {})
                .parallel.ranks_per_switch,
            2);
  EXPECT_THROW(run::ParseRunConfig(head + "parallel: {attention_ranks: 1, expert_ranks: 3, dedup: switch, "
                                          "ranks_per_node: 3, ranks_per_switch: 2}\n",
                                   "run.yaml", "/w", {}),
               Error);
  try {
    run::ParseRunConfig(head + "parallel: {attention_ranks: 1, expert_ranks: 3, dedup: node, links_profile: l.json}\n",
                        "run.yaml", "/w", {});
    ADD_FAILURE() << "links_profile accepted with dedup node";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("parallel.links_profile"), std::string::npos) << e.what();
  }
  EXPECT_THROW(run::ParseRunConfig("model: {config: c.json}\ndata: {train: t.bin}\n"
                                   "train: {steps: 1, global_batch: 4, seq_len: 8}\n"
                                   "emulate: {expert_rank: {attention: 0.5}}\n",
                                   "run.yaml", ".", {}),
               Error);
}

// data.valid / data.tokenizer resolve like data.train; train.eval_every
// needs data.valid, and eval_batches must be positive.
TEST(RunConfig, ValidationDataAndTokenizer) {
  const std::string base = "model: {config: c.json}\ntrain: {steps: 4, global_batch: 4, seq_len: 8";
  const auto c = run::ParseRunConfig(base + ", eval_every: 2}\ndata: {train: t.bin, valid: v.bin, tokenizer: "
                                            "sp/tokenizer.model}\n", "run.yaml", "/w", {});
  EXPECT_EQ(c.data.valid, "/w/v.bin");
  EXPECT_EQ(c.data.tokenizer, "/w/sp/tokenizer.model");
  EXPECT_EQ(c.train.eval_every, 2);
  EXPECT_EQ(c.train.eval_batches, 4);  // the default
  for (const auto& [extra, data, needle] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {", eval_every: 2}", "{train: t.bin}", "train.eval_every needs data.valid"},
           {", eval_every: -1}", "{train: t.bin, valid: v.bin}", "train.eval_every must be >= 0"},
           {", eval_batches: 0}", "{train: t.bin, valid: v.bin}", "train.eval_batches must be >= 1"},
           {"}", "{train: t.bin, validation: v.bin}", "validation"}}) {
    try {
      run::ParseRunConfig(base + extra + "\ndata: " + data + "\n", "run.yaml", ".", {});
      ADD_FAILURE() << "accepted " << extra << " " << data;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  }
}

// HETERMOE_EMULATE: one rank's emulated device (a local cluster's "V100").
TEST(RunConfig, EmulateFactorsFromTheEnvironment) {
  auto f = run::ParseEmulateFactors("attention=3.7,experts=1.25", "HETERMOE_EMULATE");
  EXPECT_DOUBLE_EQ(f.attention, 3.7);
  EXPECT_DOUBLE_EQ(f.experts, 1.25);
  f = run::ParseEmulateFactors("experts=2", "HETERMOE_EMULATE");
  EXPECT_DOUBLE_EQ(f.attention, 1.0);
  EXPECT_DOUBLE_EQ(f.experts, 2.0);
  for (const char* bad : {"attention=0.5", "gpu=2", "attention", "attention=x", "attention=2,", ""}) {
    try {
      run::ParseEmulateFactors(bad, "HETERMOE_EMULATE");
      ADD_FAILURE() << "accepted \"" << bad << "\"";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("HETERMOE_EMULATE=\"" + std::string(bad) + "\""), std::string::npos)
          << e.what();
    }
  }
}

// train.threads 0: the CPUs the process may use (a pod's CPU limit and
// cpuset), OMP_NUM_THREADS when the user set it, shared by local ranks.
TEST(CpuBudget, DefaultThreadsFollowTheLimits) {
  run::CpuLimits machine{64, std::nullopt, std::nullopt};
  EXPECT_EQ(run::DefaultThreads(machine, 1), 64);
  EXPECT_EQ(run::DefaultThreads(machine, 3), 21) << "local ranks share the machine";
  run::CpuLimits pod{64, 1.5, std::nullopt};  // a Kubernetes CPU limit of 1500m on a 64-core node
  EXPECT_EQ(run::DefaultThreads(pod, 1), 2);
  run::CpuLimits cpuset{4, 8.0, std::nullopt};
  EXPECT_EQ(run::DefaultThreads(cpuset, 1), 4);
  run::CpuLimits user{64, 2.0, 7};
  EXPECT_EQ(run::DefaultThreads(user, 3), 7) << "OMP_NUM_THREADS is the user's word";
  EXPECT_EQ(run::DefaultThreads({1, 0.1, std::nullopt}, 4), 1);
  EXPECT_EQ(run::ParseCpuMax("max 100000\n"), std::nullopt);
  EXPECT_DOUBLE_EQ(*run::ParseCpuMax("150000 100000\n"), 1.5);
  EXPECT_EQ(run::ParseCpuMax("-1 100000"), std::nullopt) << "cgroup v1: no quota";
  EXPECT_EQ(run::ParseCpuMax(""), std::nullopt);
  EXPECT_EQ(run::ParseCpuMax("abc 100000"), std::nullopt);
}

TEST(RunConfig, RejectsBadValuesNamingTheKey) {
  const std::string base = "model: {config: c.json}\ndata: {train: t.bin}\n";
  auto error = [&](const std::string& train) {
    try {
      run::ParseRunConfig(base + "train: " + train + "\n", "run.yaml", ".", {});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_EQ(error("{steps: 0, global_batch: 4, seq_len: 8}"), "run.yaml: train.steps must be >= 1");
  EXPECT_EQ(error("{steps: 1, global_batch: 4, seq_len: 8, schedule: linear}"),
            "run.yaml: train.schedule must be constant or cosine (got \"linear\")");
  EXPECT_EQ(error("{steps: 1, global_batch: 4, seq_len: 8, betas: [0.9]}"),
            "run.yaml: train.betas must be a list of two numbers");
  EXPECT_EQ(error("{steps: 1, seq_len: 8}"), "run.yaml: train.global_batch is required");
  EXPECT_EQ(error("{steps: 1, global_batch: 4, seq_len: 8, device: tpu}"),
            "run.yaml: train.device must be auto, cpu or cuda (got \"tpu\")");
  EXPECT_EQ(error("{steps: 1, global_batch: 4, seq_len: 8, memory_limit_mib: -1}"),
            "run.yaml: train.memory_limit_mib must be >= 0 (0 = no limit)");
  EXPECT_EQ(error("{steps: 1, global_batch: 4, seq_len: 8, loss_scale_init: 0.5}"),
            "run.yaml: train.loss_scale_init must be >= 1");
}

TEST(Progress, FormatsBarLossThroughputAndEta) {
  EXPECT_EQ(run::ProgressBar::Format(50, 100, 2.34567, 12345.4, 65, 10),
            "[#####-----]  50/100 loss 2.3457 | 12,345 tok/s | ETA 1m05s");
  EXPECT_EQ(run::ProgressBar::Format(100, 100, 1.0, 999, 0, 4), "[####] 100/100 loss 1.0000 | 999 tok/s | ETA 0s");
  EXPECT_EQ(run::ProgressBar::Format(100, 100, 1.0, 999, 0, 4, 1.25),
            "[####] 100/100 loss 1.0000 val 1.2500 | 999 tok/s | ETA 0s");
}

TEST(Progress, SparklineFallsWithTheLoss) {
  EXPECT_EQ(run::ProgressBar::Sparkline({5, 4, 3, 2, 1}, 5), "\u2588\u2586\u2585\u2583\u2581");
  EXPECT_EQ(run::ProgressBar::Sparkline({1, 1, 3, 3}, 2), "\u2581\u2588");  // means of halves
  EXPECT_EQ(run::ProgressBar::Sparkline({}, 10), "");
}

}  // namespace
}  // namespace hetermoe
