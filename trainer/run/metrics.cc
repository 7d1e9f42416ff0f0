#include "trainer/run/metrics.h"

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"

namespace hetermoe::run {

MetricsSink::MetricsSink(const std::string& dir, int64_t resume_step)
    : path_((std::filesystem::path(dir) / "metrics.jsonl").string()) {
  std::vector<std::string> kept;
  if (resume_step > 0) {
    std::ifstream in(path_);
    for (std::string line; std::getline(in, line);) {
      try {
        if (nlohmann::json::parse(line).at("step").get<int64_t>() <= resume_step) kept.push_back(line);
      } catch (const std::exception&) {
        // a torn last line from a crash: drop it
      }
    }
  }
  jsonl_.open(path_, std::ios::trunc);
  if (!jsonl_) throw Error(path_ + ": cannot write metrics");
  for (const auto& l : kept) jsonl_ << l << '\n';
  jsonl_.flush();
}

MetricsSink::~MetricsSink() = default;

void MetricsSink::ServePrometheus(const std::string& bind) {
  registry_ = std::make_shared<prometheus::Registry>();
  auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(*registry_).Add({});
  };
  step_ = gauge("hetermoe_trainer_step", "Optimizer steps completed");
  loss_ = gauge("hetermoe_trainer_loss", "Training loss (cross-entropy + coef * aux) of the last step");
  ce_loss_ = gauge("hetermoe_trainer_ce_loss", "Cross-entropy of the last step");
  aux_loss_ = gauge("hetermoe_trainer_aux_loss", "Router load-balancing loss of the last step");
  lr_ = gauge("hetermoe_trainer_learning_rate", "Learning rate of the last step");
  grad_norm_ = gauge("hetermoe_trainer_grad_norm", "Global gradient norm before clipping");
  tokens_per_second_ = gauge("hetermoe_trainer_tokens_per_second", "Training throughput of the last step");
  tokens_total_ = &prometheus::BuildCounter()
                       .Name("hetermoe_trainer_tokens_total")
                       .Help("Tokens trained on")
                       .Register(*registry_)
                       .Add({});
  const prometheus::Histogram::BucketBoundaries buckets{0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                        1,    2.5,   5,    10,  30,   60};
  step_seconds_ = &prometheus::BuildHistogram()
                       .Name("hetermoe_trainer_step_seconds")
                       .Help("Wall time of one optimizer step")
                       .Register(*registry_)
                       .Add({}, buckets);
  checkpoint_seconds_ = &prometheus::BuildHistogram()
                             .Name("hetermoe_trainer_checkpoint_seconds")
                             .Help("Wall time of writing one checkpoint")
                             .Register(*registry_)
                             .Add({}, buckets);
  auto& bubble = prometheus::BuildGauge()
                     .Name("hetermoe_trainer_bubble_share")
                     .Help("Idle share of the last step on the ranks of a role (distributed runs)")
                     .Register(*registry_);
  bubble_attention_ = &bubble.Add({{"role", "attention"}});
  bubble_expert_ = &bubble.Add({{"role", "expert"}});
  expert_swaps_ = &prometheus::BuildGauge()
                       .Name("hetermoe_trainer_expert_swaps")
                       .Help("HierMoE expert swaps made so far (parallel.swap_every)")
                       .Register(*registry_)
                       .Add({});
  auto& waits = prometheus::BuildGauge()
                    .Name("hetermoe_trainer_comm_wait_seconds")
                    .Help("Seconds the ranks waited on a channel in the last step (summed over ranks)")
                    .Register(*registry_);
  dispatch_wait_ = &waits.Add({{"channel", "dispatch"}});
  combine_wait_ = &waits.Add({{"channel", "combine"}});
  exchange_bytes_ = &prometheus::BuildGauge()
                         .Name("hetermoe_trainer_exchange_bytes")
                         .Help("Bytes sent between attention ranks and expert owners in the last step (both ways, all ranks)")
                         .Register(*registry_)
                         .Add({});
  try {
    exposer_ = std::make_unique<prometheus::Exposer>(bind);
  } catch (const std::exception& e) {
    throw Error("--metrics-port: cannot serve metrics on " + bind + ": " + e.what());
  }
  exposer_->RegisterCollectable(registry_);
}

int MetricsSink::port() const {
  if (!exposer_) return 0;
  const auto ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

void MetricsSink::Record(const StepMetrics& m) {
  nlohmann::json line = {{"step", m.step},
                         {"loss", m.loss},
                         {"ce_loss", m.ce_loss},
                         {"aux_loss", m.aux_loss},
                         {"lr", m.lr},
                         {"grad_norm", m.grad_norm},
                         {"tokens_per_second", m.tokens_per_second},
                         {"step_seconds", m.step_seconds},
                         {"tokens", m.tokens},
                         {"expert_tokens", m.expert_tokens},
                         {"dispatch_rows", m.dispatch_rows}};
  if (m.has_parallel_stats) {
    line["bubble_attention"] = m.bubble_attention;
    line["bubble_expert"] = m.bubble_expert;
    line["dispatch_wait_seconds"] = m.dispatch_wait_seconds;
    line["combine_wait_seconds"] = m.combine_wait_seconds;
    line["exchange_bytes"] = m.exchange_bytes;
    if (m.expert_swaps >= 0) line["expert_swaps"] = m.expert_swaps;
    line["rank_state_bytes"] = m.rank_state_bytes;
    line["dispatch_rows_sent"] = m.dispatch_rows_sent;
    line["dispatch_rows_inter_node"] = m.dispatch_rows_inter_node;
    line["dispatch_rows_relayed"] = m.dispatch_rows_relayed;
    std::vector<std::string> depth;
    std::vector<double> node_share;
    for (double x : m.dedup_depth) {
      depth.push_back(x >= 2 ? m.dedup_relay_level : x == 1 ? "rank" : x == 0 ? "off" : "mixed");
      node_share.push_back(x > 1 ? x - 1 : 0.0);
    }
    line["dedup_depth"] = depth;
    line["dedup_node_share"] = node_share;
    line["expert_load_imbalance"] = m.expert_load_imbalance;
  }
  if (m.loss_scale != 1.0) line["loss_scale"] = m.loss_scale;
  if (m.step_skipped) line["step_skipped"] = true;
  if (m.val_loss) {
    line["val_loss"] = *m.val_loss;
    line["eval_seconds"] = m.eval_seconds;
  }
  jsonl_ << line.dump() << '\n';
  jsonl_.flush();
  if (!jsonl_) throw Error(path_ + ": cannot write metrics");
  if (!registry_) return;
  step_->Set(static_cast<double>(m.step));
  loss_->Set(m.loss);
  ce_loss_->Set(m.ce_loss);
  aux_loss_->Set(m.aux_loss);
  if (m.val_loss) {
    // Registered at the first evaluation: a run without data.valid has no series.
    if (val_loss_ == nullptr)
      val_loss_ = &prometheus::BuildGauge()
                       .Name("hetermoe_trainer_val_loss")
                       .Help("Validation cross-entropy (data.valid) at the last evaluation")
                       .Register(*registry_)
                       .Add({});
    val_loss_->Set(*m.val_loss);
  }
  lr_->Set(m.lr);
  grad_norm_->Set(m.grad_norm);
  tokens_per_second_->Set(m.tokens_per_second);
  tokens_total_->Increment(static_cast<double>(m.tokens));
  step_seconds_->Observe(m.step_seconds);
  if (m.has_parallel_stats) {
    bubble_attention_->Set(m.bubble_attention);
    if (m.expert_swaps >= 0) expert_swaps_->Set(static_cast<double>(m.expert_swaps));
    bubble_expert_->Set(m.bubble_expert);
    dispatch_wait_->Set(m.dispatch_wait_seconds);
    combine_wait_->Set(m.combine_wait_seconds);
    exchange_bytes_->Set(m.exchange_bytes);
    if (rank_state_bytes_.empty() && !m.rank_state_bytes.empty()) {
      auto& family = prometheus::BuildGauge()
                         .Name("hetermoe_trainer_rank_state_bytes")
                         .Help("Bytes of parameters, gradients and AdamW moments each rank holds")
                         .Register(*registry_);
      for (size_t r = 0; r < m.rank_state_bytes.size(); ++r)
        rank_state_bytes_.push_back(&family.Add({{"rank", std::to_string(r)}}));
    }
    for (size_t r = 0; r < rank_state_bytes_.size() && r < m.rank_state_bytes.size(); ++r)
      rank_state_bytes_[r]->Set(static_cast<double>(m.rank_state_bytes[r]));
  }
  // Per layer: deduplication and load balance (HierMoE). Every run has the
  // series (one process: sent = routed, imbalance 1).
  if (rows_routed_.empty()) {
    auto& rows = prometheus::BuildGauge()
                     .Name("hetermoe_trainer_dispatch_rows")
                     .Help("Rows dispatched to expert owners in the last step per layer: routed = (token, expert) "
                           "pairs, sent = rows on the wire for them (one per token and owner with parallel.dedup), "
                           "inter_node = of those, rows to another node, relayed = rows a node's first owner "
                           "passed on inside its node (parallel.dedup node)")
                     .Register(*registry_);
    auto& imbalance = prometheus::BuildGauge()
                          .Name("hetermoe_trainer_expert_load_imbalance")
                          .Help("max / mean of the routed rows over the ranks holding a layer's experts, last step")
                          .Register(*registry_);
    for (size_t l = 0; l < m.expert_tokens.size(); ++l) {
      const std::string layer = std::to_string(l);
      rows_routed_.push_back(&rows.Add({{"layer", layer}, {"kind", "routed"}}));
      rows_sent_.push_back(&rows.Add({{"layer", layer}, {"kind", "sent"}}));
      rows_inter_node_.push_back(&rows.Add({{"layer", layer}, {"kind", "inter_node"}}));
      rows_relayed_.push_back(&rows.Add({{"layer", layer}, {"kind", "relayed"}}));
      load_imbalance_.push_back(&imbalance.Add({{"layer", layer}}));
    }
  }
  if (dedup_depth_.empty()) {
    auto& family = prometheus::BuildGauge()
                       .Name("hetermoe_trainer_dedup_depth")
                       .Help("Token deduplication depth each layer ran in the last step: 0 off (one process: "
                             "nothing is sent), 1 rank, 2 node; parallel.dedup auto chooses per block, and "
                             "between 1 and 2 is 1 + the share of blocks sent at node level")
                       .Register(*registry_);
    for (size_t l = 0; l < m.expert_tokens.size(); ++l)
      dedup_depth_.push_back(&family.Add({{"layer", std::to_string(l)}}));
  }
  for (size_t l = 0; l < dedup_depth_.size(); ++l)
    dedup_depth_[l]->Set(l < m.dedup_depth.size() ? m.dedup_depth[l] : 0);
  auto at = [](const std::vector<double>& v, size_t l) { return l < v.size() ? v[l] : 0.0; };
  for (size_t l = 0; l < rows_routed_.size(); ++l) {
    rows_routed_[l]->Set(at(m.dispatch_rows, l));
    rows_sent_[l]->Set(at(m.dispatch_rows_sent, l));
    rows_inter_node_[l]->Set(at(m.dispatch_rows_inter_node, l));
    rows_relayed_[l]->Set(at(m.dispatch_rows_relayed, l));
    load_imbalance_[l]->Set(at(m.expert_load_imbalance, l));
  }
  if (expert_tokens_.empty()) {
    auto& family = prometheus::BuildCounter()
                       .Name("hetermoe_trainer_expert_tokens_total")
                       .Help("Token assignments routed to each expert")
                       .Register(*registry_);
    for (size_t l = 0; l < m.expert_tokens.size(); ++l) {
      expert_tokens_.emplace_back();
      for (size_t e = 0; e < m.expert_tokens[l].size(); ++e)
        expert_tokens_[l].push_back(
            &family.Add({{"layer", std::to_string(l)}, {"expert", std::to_string(e)}}));
    }
  }
  for (size_t l = 0; l < m.expert_tokens.size(); ++l)
    for (size_t e = 0; e < m.expert_tokens[l].size(); ++e)
      expert_tokens_[l][e]->Increment(static_cast<double>(m.expert_tokens[l][e]));
}

void MetricsSink::RecordCheckpoint(double seconds) {
  if (checkpoint_seconds_) checkpoint_seconds_->Observe(seconds);
}

}  // namespace hetermoe::run
