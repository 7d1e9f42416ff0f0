// Where a step's numbers go: one JSON line per optimizer step in
// <output.dir>/metrics.jsonl, and (when a port is given) Prometheus metrics
// served by prometheus-cpp's Exposer.
//
// Prometheus families are registered once and their series kept, as
// prometheus-cpp recommends; labels stay low-cardinality (layer, expert).
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace prometheus {
class Exposer;
class Registry;
class Gauge;
class Counter;
class Histogram;
}  // namespace prometheus

namespace hetermoe::run {

struct StepMetrics {
  int64_t step = 0;
  double loss = 0, ce_loss = 0, aux_loss = 0;
  double lr = 0, grad_norm = 0;
  double tokens_per_second = 0;
  double step_seconds = 0;
  int64_t tokens = 0;                                // tokens this step
  std::vector<std::vector<int64_t>> expert_tokens;   // [L][E] this step
  // Distributed runs only.
  bool has_parallel_stats = false;
  double bubble_attention = 0, bubble_expert = 0;    // idle share of the step per role
  double dispatch_wait_seconds = 0, combine_wait_seconds = 0;
  double exchange_bytes = 0;                         // attention <-> owner traffic this step
  std::vector<double> dispatch_rows;                 // [L] (token, expert) rows dispatched
  std::vector<double> dispatch_rows_sent;            // [L] rows sent for them (deduplicated; one process: = rows)
  std::vector<double> dispatch_rows_inter_node;      // [L] of those, rows sent to another node (one process: 0)
  std::vector<double> dispatch_rows_relayed;         // [L] rows relayed inside a node (parallel.dedup node)
  std::vector<double> dedup_depth;                   // [L] 0 off, 1 rank, 2 node or switch (distributed runs)
  std::string dedup_relay_level = "node";            // the level a dedup_depth of 2 relays at: node | switch
  std::vector<double> expert_load_imbalance;         // [L] max / mean routed rows over owner ranks (one process: 1)
  int64_t expert_swaps = -1;                         // HierMoE expert swaps made so far (distributed runs)
  std::vector<int64_t> rank_state_bytes;             // per rank: parameters, gradients, AdamW moments held
  double loss_scale = 1.0;                           // fp16 loss scaling (1 = none)
  bool step_skipped = false;                         // fp16: overflow, the optimizer step was skipped
  // Steps that evaluated data.valid (train.eval_every, and the last step).
  std::optional<double> val_loss;                    // mean cross-entropy over the evaluation batches
  double eval_seconds = 0;
};

class MetricsSink {
 public:
  // Opens <dir>/metrics.jsonl. On resume (resume_step > 0) the lines with a
  // larger step are dropped first, so the file reads as one clean run.
  MetricsSink(const std::string& dir, int64_t resume_step);
  ~MetricsSink();

  // Serves /metrics on `bind` ("0.0.0.0:9090", or ":0"-style with port 0).
  void ServePrometheus(const std::string& bind);
  // The port actually bound (after ServePrometheus), 0 otherwise.
  int port() const;

  void Record(const StepMetrics& m);
  void RecordCheckpoint(double seconds);

 private:
  std::string path_;
  std::ofstream jsonl_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Gauge* step_ = nullptr;
  prometheus::Gauge* loss_ = nullptr;
  prometheus::Gauge* ce_loss_ = nullptr;
  prometheus::Gauge* val_loss_ = nullptr;
  prometheus::Gauge* aux_loss_ = nullptr;
  prometheus::Gauge* lr_ = nullptr;
  prometheus::Gauge* grad_norm_ = nullptr;
  prometheus::Gauge* tokens_per_second_ = nullptr;
  prometheus::Counter* tokens_total_ = nullptr;
  prometheus::Histogram* step_seconds_ = nullptr;
  prometheus::Histogram* checkpoint_seconds_ = nullptr;
  prometheus::Gauge* bubble_attention_ = nullptr;
  prometheus::Gauge* bubble_expert_ = nullptr;
  prometheus::Gauge* expert_swaps_ = nullptr;
  prometheus::Gauge* dispatch_wait_ = nullptr;
  prometheus::Gauge* exchange_bytes_ = nullptr;
  prometheus::Gauge* combine_wait_ = nullptr;
  std::vector<std::vector<prometheus::Counter*>> expert_tokens_;  // [L][E], made lazily
  std::vector<prometheus::Gauge*> rank_state_bytes_;              // by rank, made lazily
  // [L], made at the first step (0 outside distributed runs).
  std::vector<prometheus::Gauge*> rows_routed_, rows_sent_, rows_inter_node_, rows_relayed_, load_imbalance_;
  std::vector<prometheus::Gauge*> dedup_depth_;
};

}  // namespace hetermoe::run
