#include "trainer/run/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <optional>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/file_bytes.h"
#include "common/mixtral_config.h"
#include "trainer/backend/backend.h"
#include "trainer/data/batches.h"
#include "trainer/data/tokenizer.h"
#include "trainer/io/token_file.h"
#include "trainer/model/parameters.h"
#include "trainer/ops/gemm.h"
#include "trainer/optim/lr_schedule.h"
#include "trainer/run/checkpoint.h"
#include "trainer/run/cpu_budget.h"
#include "trainer/run/distributed.h"
#include "trainer/run/progress.h"

namespace hetermoe::run {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Fails early, before any compute, if the output folder cannot be written.
void PrepareOutputDir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(dir + ": cannot create output.dir: " + ec.message());
  const fs::path probe = fs::path(dir) / ".write-test";
  std::ofstream out(probe);
  if (!(out << "ok")) throw Error(dir + ": output.dir is not writable");
  out.close();
  fs::remove(probe, ec);
}

void RemoveOldCheckpoints(const std::string& dir, int64_t keep) {
  if (keep <= 0) return;
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("checkpoint-", 0) != 0) continue;
    try {
      found.emplace_back(std::stoll(name.substr(11)), e.path());
    } catch (const std::exception&) {
    }
  }
  std::sort(found.begin(), found.end());
  for (size_t i = 0; i + keep < found.size(); ++i) fs::remove_all(found[i].second, ec);
}

// train.memory_limit_mib: the model state (fp32 parameters, gradients and
// two AdamW moments: 16 bytes per parameter, less with ZeRO-1's shards) this
// rank would hold must fit.
void CheckMemoryLimit(int64_t limit_mib, double held_bytes, int64_t model_params, int rank) {
  if (limit_mib <= 0) return;
  const double mib = held_bytes / (1 << 20);
  if (mib <= static_cast<double>(limit_mib)) return;
  char text[320];
  if (rank < 0) {
    std::snprintf(text, sizeof text,
                  "the model's state (parameters, gradients, AdamW moments) needs %.1f MiB, over "
                  "train.memory_limit_mib %lld: split it over attention and expert ranks (a parallel section)",
                  mib, static_cast<long long>(limit_mib));
  } else {
    std::snprintf(text, sizeof text,
                  "rank %d holds %.1f MiB of model state (parameters, gradients, AdamW moments; the whole model "
                  "%.1f MiB), over train.memory_limit_mib %lld: add expert ranks",
                  rank, mib, 16.0 * static_cast<double>(model_params) / (1 << 20), static_cast<long long>(limit_mib));
  }
  throw Error(text);
}

// output.dtype: auto exports bf16 when the run computes in 16 bits.
io::DType ExportDtype(const std::string& dtype, const std::string& precision) {
  if (dtype == "auto") return precision == "fp32" ? io::DType::kF32 : io::DType::kBF16;
  return dtype == "bf16" ? io::DType::kBF16 : io::DType::kF32;
}

}  // namespace

ProcessRole DecideProcessRole(const RunConfig& rc, bool started_by_local_launcher) {
  if (!rc.parallel.enabled) return ProcessRole::kSingle;
  if (rc.parallel.launch != "local") return ProcessRole::kRank;
  return started_by_local_launcher ? ProcessRole::kLocalRank : ProcessRole::kLauncher;
}

TrainResult Train(const RunConfig& rc, const TrainOptions& options) {
  if (options.role == ProcessRole::kLauncher)
    throw Error("Train: the local launcher trains nothing itself (LaunchLocally starts the ranks)");
  if (rc.parallel.enabled == (options.role == ProcessRole::kSingle))
    throw Error("Train: " + rc.source + (rc.parallel.enabled ? " has a parallel section but this process is no rank"
                                                             : " has no parallel section but this process is a rank"));
  const auto& t = rc.train;
  const io::MixtralConfig config = io::LoadMixtralConfig(rc.model.config);
  // Checkpoints carry the given config.json's other keys, and the files that
  // came with the initial weights (what from_pretrained and generate read).
  std::vector<std::string> unused_keys;
  const nlohmann::json exported_config = io::MixtralConfigToJsonKeeping(
      config, nlohmann::json::parse(io::ReadFileBytes(rc.model.config), nullptr, false), &unused_keys);
  std::vector<CheckpointView::ExtraFile> companion_files;
  if (!rc.model.init.empty()) {
    const fs::path init(rc.model.init);
    const fs::path folder = fs::is_directory(init) ? init : init.parent_path();
    if (fs::is_directory(init) || init.filename() == "model.safetensors.index.json")
      for (const char* name : {"generation_config.json", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                               "special_tokens_map.json"})
        if (fs::is_regular_file(folder / name)) companion_files.push_back({(folder / name).string(), name});
  }
  // data.tokenizer: its ids must be embeddings of the model; checkpoints carry
  // it as tokenizer.model (where Hugging Face's Llama/Mixtral tokenizers look).
  if (!rc.data.tokenizer.empty()) {
    const data::Tokenizer tokenizer(rc.data.tokenizer);
    if (tokenizer.vocab_size() > config.vocab_size)
      throw Error(rc.data.tokenizer + ": the tokenizer's " + std::to_string(tokenizer.vocab_size()) +
                  " pieces exceed the model's vocab_size " + std::to_string(config.vocab_size) + " (" +
                  rc.model.config + ")");
    std::erase_if(companion_files, [](const auto& f) { return f.name == "tokenizer.model"; });
    companion_files.push_back({rc.data.tokenizer, "tokenizer.model"});
  }
  if (t.seq_len > config.max_position_embeddings)
    throw Error(rc.source + ": train.seq_len " + std::to_string(t.seq_len) +
                " exceeds max_position_embeddings " +
                std::to_string(config.max_position_embeddings) + " of " + rc.model.config);
  // Ranks the local launcher started share this machine's CPUs.
  const int sharing = options.role == ProcessRole::kLocalRank
                          ? rc.parallel.groups * (rc.parallel.attention_ranks + rc.parallel.expert_ranks)
                          : 1;
  ops::SetNumThreads(t.threads > 0 ? static_cast<int>(t.threads) : DefaultThreads(ReadCpuLimits(), sharing));

  // Token files are mapped, not read: each rank reads only its sequences.
  std::vector<io::TokenFile> shards;
  for (const std::string& file : data::ExpandShards(rc.data.train_shards)) shards.emplace_back(file, config.vocab_size);
  const std::unique_ptr<data::BatchSource> reader =
      data::MakeBatches(std::move(shards), t.global_batch, t.seq_len, rc.data.shuffle, t.seed);
  // data.valid: every evaluation reads its first eval_batches global batches.
  std::unique_ptr<data::BatchSource> valid;
  if (!rc.data.valid.empty()) {
    std::vector<io::TokenFile> file;
    file.emplace_back(rc.data.valid, config.vocab_size);
    const int64_t tokens = file.front().size(), batches = (tokens - 1) / (t.global_batch * t.seq_len);
    if (batches < t.eval_batches)
      throw Error(rc.data.valid + ": " + std::to_string(tokens) + " tokens hold " + std::to_string(batches) +
                  " global batches of " + std::to_string(t.global_batch) + " x " + std::to_string(t.seq_len) +
                  " (+1), fewer than train.eval_batches " + std::to_string(t.eval_batches));
    valid = data::MakeBatches(std::move(file), t.global_batch, t.seq_len, false, 0);
  }
  const model::ParameterLayout layout(config);
  std::unique_ptr<DistributedRun> dist_run;
  if (rc.parallel.enabled) dist_run = JoinDistributedRun(rc, config, layout, options);
  const bool writer = !dist_run || dist_run->rank == 0;
  if (writer) PrepareOutputDir(rc.output.dir);
  if (writer && !unused_keys.empty()) {
    std::string list;
    for (const std::string& k : unused_keys) list += (list.empty() ? "" : ", ") + k;
    std::fprintf(stderr, "%s: not used by the trainer, kept in exported configs: %s\n", rc.model.config.c_str(),
                 list.c_str());
  }

  // A rank of a distributed run reads, initialises and uploads only the
  // tensors it holds; the whole model exists on rank 0 at checkpoints only.
  std::optional<model::ParameterLayout> owned_layout;
  if (dist_run) owned_layout = layout.Subset(dist_run->owned);
  const model::ParameterLayout& held = owned_layout ? *owned_layout : layout;
  CheckMemoryLimit(t.memory_limit_mib,
                   dist_run ? static_cast<double>(dist_run->engine->RankStateBytes()[dist_run->rank])
                            : 16.0 * static_cast<double>(held.total()),
                   layout.total(), dist_run ? dist_run->rank : -1);
  TrainerState state;
  std::string resume_dir = options.resume;
  if (resume_dir == "auto") resume_dir = FindLatestCheckpoint(rc.output.dir);
  // A distributed rank that starts at step 0 writes its parameters straight
  // into the engine (its moments are zero); otherwise they go through a host
  // copy that Upload hands over.
  backend::HostState host;
  const bool in_place = dist_run && resume_dir.empty();
  if (!in_place) {
    host.params.assign(held.total(), 0.0f);
    host.exp_avg.assign(held.total(), 0.0f);
    host.exp_avg_sq.assign(held.total(), 0.0f);
  }
  float* const params = in_place ? dist_run->engine->HostParams() : host.params.data();
  // Each rank of a distributed run says how much of the files it read.
  auto report_read = [&](uint64_t bytes, const std::string& from) {
    if (dist_run)
      std::fprintf(stderr, "rank %d read %.1f MiB (%llu bytes) of tensors from %s\n", dist_run->rank,
                   static_cast<double>(bytes) / (1 << 20), static_cast<unsigned long long>(bytes), from.c_str());
  };
  if (!resume_dir.empty()) {
    const LoadedCheckpoint loaded = ReadCheckpoint(resume_dir, config, layout, host.params.data(), host.exp_avg.data(),
                                                   host.exp_avg_sq.data(), owned_layout ? &*owned_layout : nullptr);
    state = loaded.state;
    report_read(loaded.bytes_read, resume_dir);
    host.optimizer_step = state.step;
    reader->set_position({state.data_epoch, state.data_position});
    if (writer)
      std::fprintf(stderr, "resumed from %s at step %lld\n", resume_dir.c_str(),
                   static_cast<long long>(state.step));
  } else if (!rc.model.init.empty()) {
    report_read(model::LoadParameters(held, rc.model.init, params, owned_layout.has_value()), rc.model.init);
  } else {
    model::InitParameters(layout, config.initializer_range, t.seed, held, params);
  }
  if (!dist_run && t.recompute != "none")
    throw Error("train.recompute " + t.recompute +
                ": recomputation runs in distributed runs, where activations wait across micro-batches "
                "(add a parallel section)");
  const std::unique_ptr<backend::Backend> engine =
      dist_run ? std::move(dist_run->backend)
               : backend::MakeBackend(config, layout,
                                      {t.device, {t.beta1, t.beta2, t.eps, t.weight_decay}, t.precision, t.loss_scale_init});
  if (in_place) dist_run->engine->ParamsWritten();
  else engine->Upload(host);
  if (dist_run) {  // a resumed run's experts go back where the swaps had put them
    dist_run->engine->SetExpertPlacement(state.expert_placement, state.expert_swaps);
    if (writer && !state.expert_placement.empty())
      std::fprintf(stderr, "expert placement restored from the checkpoint (%lld swaps made before)\n",
                   static_cast<long long>(state.expert_swaps));
  } else if (!state.expert_placement.empty() && writer) {
    std::fprintf(stderr, "%s: its expert placement (expert swap) is for distributed runs; one process uses the "
                 "original order\n", resume_dir.c_str());
  }
  if (dist_run) {
    // Each rank now holds only its own tensors; the whole-model copy comes
    // back on rank 0 for a checkpoint only (Download).
    host = backend::HostState{};
  }
  if (writer) std::fprintf(stderr, "backend: %s\n", engine->name().c_str());

  std::unique_ptr<MetricsSink> metrics;
  if (writer) {
    metrics = std::make_unique<MetricsSink>(rc.output.dir, state.step);
    if (!options.metrics_bind.empty()) {
      metrics->ServePrometheus(options.metrics_bind);
      std::fprintf(stderr, "serving Prometheus metrics on port %d (/metrics)\n", metrics->port());
    }
  }

  optim::LrSchedule schedule;
  schedule.kind = t.schedule == "cosine" ? optim::LrSchedule::Kind::kCosine
                                         : optim::LrSchedule::Kind::kConstant;
  schedule.lr = t.lr;
  schedule.warmup_steps = t.warmup_steps;
  schedule.min_lr = t.min_lr;
  schedule.total_steps = t.steps;

  const int64_t R = t.micro_batches;
  const int64_t step_tokens = t.global_batch * t.seq_len;
  std::vector<int32_t> inputs(step_tokens), targets(step_tokens);
  // The rows this rank computes with: the only ones it reads.
  const std::vector<bool> sequences = engine->SequencesUsed(t.global_batch, R);

  TrainResult result;
  result.first_step = state.step;
  result.wrote_outputs = writer;
  ProgressBar progress(state.step, t.steps, options.progress && writer);
  auto checkpoint = [&](const std::string& dir) {
    const auto c0 = Clock::now();
    state.data_position = reader->position().position;
    state.data_epoch = reader->position().epoch;
    if (dist_run) {
      state.expert_placement = dist_run->engine->ExpertPlacement();
      state.expert_swaps = dist_run->engine->SwapsMade();
    }
    const auto shard_bytes = static_cast<int64_t>(rc.output.max_shard_mib * (1 << 20));
    const io::DType weights_dtype = ExportDtype(rc.output.dtype, engine->precision());
    if (dist_run) {
      // Rank 0 writes tensor by tensor, fetching each from the rank that holds it.
      dist_run->engine->StreamCheckpoint([&](const parallel::DistributedBackend::TensorFetch& fetch) {
        WriteCheckpoint(dir, {&config, &layout, nullptr, nullptr, nullptr, state,
                              [&](size_t i, StateBuffer b, int64_t first, int64_t count, float* out) {
                                fetch(i, static_cast<int>(b), first, count, out);
                              },
                              shard_bytes, weights_dtype, &exported_config, companion_files});
      });
    } else {
      engine->Download(&host);
      WriteCheckpoint(dir, {&config, &layout, host.params.data(), host.exp_avg.data(), host.exp_avg_sq.data(),
                            state, nullptr, shard_bytes, weights_dtype, &exported_config, companion_files});
    }
    if (!writer) return;
    metrics->RecordCheckpoint(Seconds(c0, Clock::now()));
  };

  // The validation loss: the mean cross-entropy over the evaluation batches,
  // with the weights as they are after this step's update.
  auto evaluate = [&] {
    valid->set_position({0, 0});
    double ce = 0;
    for (int64_t b = 0; b < t.eval_batches; ++b) {
      valid->Next(inputs.data(), targets.data(), sequences);
      ce += engine->Evaluate({inputs.data(), targets.data(), t.global_batch, t.seq_len, R}).ce;
    }
    return ce / static_cast<double>(t.eval_batches);
  };

  while (state.step < t.steps) {
    const auto t0 = Clock::now();
    const int64_t step = state.step + 1;
    reader->Next(inputs.data(), targets.data(), sequences);
    const int64_t skipped_before = engine->SkippedSteps();
    const backend::StepLoss loss =
        engine->ComputeGradients({inputs.data(), targets.data(), t.global_batch, t.seq_len, R});
    StepMetrics m;
    m.step = step;
    m.loss = loss.loss;
    m.ce_loss = loss.ce;
    m.aux_loss = loss.aux;
    m.expert_tokens = loss.expert_tokens;
    // Routed rows per layer: the experts' assignments. One process sends
    // none of them, and its one "rank" holding the experts is the mean.
    for (const auto& layer : m.expert_tokens)
      m.dispatch_rows.push_back(static_cast<double>(std::accumulate(layer.begin(), layer.end(), int64_t{0})));
    m.dispatch_rows_sent = loss.has_parallel_stats ? loss.dispatch_rows_sent : m.dispatch_rows;
    m.dispatch_rows_inter_node = loss.dispatch_rows_inter_node;
    m.dispatch_rows_relayed = loss.dispatch_rows_relayed;
    m.dedup_depth = loss.dedup_depth;
    m.dedup_relay_level = loss.dedup_relay_level;
    m.expert_load_imbalance = loss.expert_load_imbalance;
    if (!loss.has_parallel_stats)
      for (double rows : m.dispatch_rows) m.expert_load_imbalance.push_back(rows > 0 ? 1.0 : 0.0);
    if (loss.has_parallel_stats) {
      m.has_parallel_stats = true;
      m.bubble_attention = loss.bubble_attention;
      m.bubble_expert = loss.bubble_expert;
      m.dispatch_wait_seconds = loss.dispatch_wait_seconds;
      m.combine_wait_seconds = loss.combine_wait_seconds;
      m.exchange_bytes = loss.exchange_bytes;
      m.rank_state_bytes = loss.rank_state_bytes;
    }
    m.grad_norm = engine->ClipGradNorm(t.grad_clip);
    m.lr = schedule.At(step);
    m.loss_scale = engine->LossScale();
    engine->OptimizerStep(m.lr);
    m.step_skipped = engine->SkippedSteps() > skipped_before;
    if (dist_run) m.expert_swaps = dist_run->engine->SwapsMade();
    state.step = step;
    state.tokens_seen += step_tokens;
    m.tokens = step_tokens;
    m.step_seconds = Seconds(t0, Clock::now());
    m.tokens_per_second = step_tokens / std::max(m.step_seconds, 1e-9);
    if (valid && ((t.eval_every > 0 && step % t.eval_every == 0) || step == t.steps)) {
      const auto e0 = Clock::now();
      m.val_loss = evaluate();
      m.eval_seconds = Seconds(e0, Clock::now());
    }
    if (!std::isfinite(m.loss))
      throw Error("step " + std::to_string(step) + ": loss is " + std::to_string(m.loss) +
                  " (diverged); lower train.lr or enable train.grad_clip");
    if (metrics) metrics->Record(m);
    progress.Update(step, m.loss, m.tokens_per_second, m.val_loss);
    if (options.on_step) options.on_step(m);
    result.steps.push_back(m);
    if (rc.output.checkpoint_every > 0 && step % rc.output.checkpoint_every == 0 && step < t.steps) {
      checkpoint((fs::path(rc.output.dir) / ("checkpoint-" + std::to_string(step))).string());
      if (writer) RemoveOldCheckpoints(rc.output.dir, rc.output.keep_checkpoints);
    }
  }
  progress.Finish();
  if (dist_run) {
    const uint64_t read = reader->bytes_read() + (valid ? valid->bytes_read() : 0);
    std::fprintf(stderr, "rank %d read %.1f MiB (%llu bytes) of token ids\n", dist_run->rank,
                 static_cast<double>(read) / (1 << 20), static_cast<unsigned long long>(read));
  }
  result.final_dir = (fs::path(rc.output.dir) / "final").string();
  checkpoint(result.final_dir);
  result.last_step = state.step;
  if (dist_run && !options.trace_path.empty()) WriteTrace(*dist_run, options.trace_path);
  if (options.metrics_linger_seconds > 0 && !options.metrics_bind.empty())
    std::this_thread::sleep_for(std::chrono::duration<double>(options.metrics_linger_seconds));
  return result;
}

}  // namespace hetermoe::run
