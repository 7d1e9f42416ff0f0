// The run file (YAML): what to train, on what, for how long, and where the
// results go. Every key is documented in the README ("The run file").
//
// Parsing is strict: an unknown key, a wrong type or an out-of-range value is
// a hetermoe::Error naming the file and the key, so a typo never silently
// trains the wrong thing. Relative paths in the file resolve against the
// file's directory; paths given with --set resolve against the working
// directory.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hetermoe::run {

struct RunConfig {
  std::string source;  // the run file's path (for messages)

  struct Model {
    std::string config;  // Hugging Face config.json
    std::string init;    // optional model.safetensors; empty = seeded random init
  } model;

  struct Data {
    std::string train;      // token files as written (a path, a glob, or a YAML list of them), for messages
    std::vector<std::string> train_shards;  // each path or glob, resolved
    bool shuffle = false;   // false: llm.c's order over the files back to back; true: shuffled sequences per epoch
    std::string valid;      // optional token file for the validation loss
    std::string tokenizer;  // optional SentencePiece model: its vocabulary is checked, checkpoints carry it
  } data;

  struct Train {
    int64_t steps = 0;           // optimizer steps
    int64_t global_batch = 0;    // sequences per optimizer step
    int64_t micro_batches = 1;   // gradient accumulation slices (divides global_batch)
    int64_t seq_len = 0;
    double lr = 1e-3;
    std::string schedule = "constant";  // constant | cosine
    int64_t warmup_steps = 0;
    double min_lr = 0.0;
    double beta1 = 0.9, beta2 = 0.95;
    double eps = 1e-8;
    double weight_decay = 0.1;
    double grad_clip = 1.0;      // 0 = off
    uint64_t seed = 1234;
    int threads = 0;             // 0 = the CPUs this process may use (run/cpu_budget.h)
    int64_t memory_limit_mib = 0;
    std::string recompute = "none";  // none | attention | experts | full (activations recomputed in backward)
    int zero = 0;                // ZeRO stage: 0, or 1 (dense AdamW moments sharded over the attention ranks)
    double loss_scale_init = 65536.0;  // fp16: the first dynamic loss scale  // most model state (params, grads, AdamW moments) one rank may hold; 0 = none
    std::string device = "auto"; // auto | cpu | cuda
    std::string precision = "fp32";  // GPU GEMM format: fp32 | bf16 | fp16 | auto (per GPU generation)
    int64_t eval_every = 0;      // with data.valid: the validation loss every this many steps (0 = after the last)
    int64_t eval_batches = 4;    // global batches from the start of data.valid per evaluation
  } train;

  // Distributed run (zebra parallelism). Absent = one process.
  struct Parallel {
    bool enabled = false;          // true when the run file has a parallel section
    int attention_ranks = 1;       // M per ZP group
    int expert_ranks = 1;          // N per ZP group
    int groups = 1;                // data-parallel ZP groups
    std::string schedule = "zebra";  // zebra | sequential | ep
    std::string asym_ea = "off";     // auto | off | list (then asym_ea_layers)
    std::vector<int> asym_ea_layers; // experts moved to attention ranks, per layer
    std::string launch = "local";    // local | env
    double timeout_seconds = 60;     // rendezvous and every collective
    // HierMoE token deduplication on the dispatch: off | rank | node | auto
    // (true = rank, false = off); node also sends a token once per other
    // node; switch once per other switch (the level below the node); auto
    // picks rank or node per block from the measured links.
    std::string dedup = "rank";
    // Nodes of a local run: ranks 0..n-1 are node 0, n..2n-1 node 1, ... (0 =
    // from each rank's HETERMOE_NODE_NAME, else its host name).
    int ranks_per_node = 0;
    // The level below the node for dedup switch: ranks 0..n-1 are one PCIe
    // switch or NVLink island, n..2n-1 the next (0 = from each rank's
    // HETERMOE_SWITCH_NAME within its node).
    int ranks_per_switch = 0;
    // dedup auto: the links from this profile (a run's links.json) instead of
    // measuring them at start-up ("" = measure; either way the links in use
    // are written to <output.dir>/links.json).
    std::string links_profile;
    int64_t swap_every = 0;          // HierMoE expert swap every this many steps; 0 = never
    std::string transport = "auto";  // rows between ranks: auto | nccl (GPU to GPU) | gloo (through the host)
    int micro_batches_in_flight = 0; // zebra in waves of this many micro-batches per attention rank (0 = all)
  } parallel;

  // Heterogeneity emulation: slow-down factors (>= 1) per rank role and op kind.
  struct Emulate {
    double attention_rank_attention = 1.0, attention_rank_experts = 1.0;
    double expert_rank_attention = 1.0, expert_rank_experts = 1.0;
    // Links for the rows between ranks (emulate.links): bandwidth in Gbit/s
    // between nodes and inside one, latency per message; 0 = not emulated.
    double inter_node_gbps = 0, intra_node_gbps = 0, latency_us = 0;
  } emulate;

  struct Output {
    std::string dir = "out";
    int64_t checkpoint_every = 0;  // 0 = only final/
    int64_t keep_checkpoints = 0;  // 0 = keep all checkpoint-<step>/ folders
    double max_shard_mib = 0;      // model weights in shards of at most this size + an index; 0 = one file
    // The exported weights: fp32 | bf16 (fp32 master weights kept for resume) |
    // auto (bf16 when the run computes in bf16 or fp16, as Mixtral is published).
    std::string dtype = "auto";
  } output;
};

// "attention=3.7,experts=1.25": slow-down factors (>= 1; either may be left
// out, meaning 1) for one rank, as HETERMOE_EMULATE gives them. Throws
// hetermoe::Error naming `source` when malformed.
struct EmulateFactors {
  double attention = 1.0, experts = 1.0;
};
EmulateFactors ParseEmulateFactors(const std::string& text, const std::string& source);

// `overrides` are "dotted.key=value" strings (value parsed as YAML).
RunConfig LoadRunConfig(const std::string& path, const std::vector<std::string>& overrides = {});
RunConfig ParseRunConfig(const std::string& yaml_text, const std::string& source,
                         const std::string& base_dir,
                         const std::vector<std::string>& overrides = {});

}  // namespace hetermoe::run
