// The training loop end to end: resume exactness, micro-batching semantics,
// checkpoint contents, and that bad inputs stop the run with one clear error.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tests/trainer/workspace.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/mixtral.h"
#include "trainer/model/parameters.h"
#include "trainer/ops/gemm.h"
#include "trainer/run/checkpoint.h"
#include "trainer/run/trainer.h"

namespace hetermoe {
namespace {

namespace fs = std::filesystem;
using testing::Workspace;

run::TrainOptions Quiet() {
  run::TrainOptions o;
  o.progress = false;
  return o;
}

std::vector<float> ReadAll(const std::string& path) {
  const auto f = io::SafetensorsFile::Load(path);
  std::vector<float> all;
  for (const auto& t : f.tensors()) {
    const auto v = f.ReadFloat(t.name);
    all.insert(all.end(), v.begin(), v.end());
  }
  return all;
}

TEST(Resume, TwoPlusTwoStepsEqualFourStraight) {
  Workspace ws;
  const std::string run_file = ws.WriteRun();
  const auto straight = run::Train(run::LoadRunConfig(run_file, {"output.dir=" + ws.Path("a")}), Quiet());
  ASSERT_EQ(straight.steps.size(), 4u);

  // The checkpoint written at step 2 of a 4-step run is what a run stopped
  // after step 2 leaves behind (the cosine schedule depends on train.steps,
  // so the stopped run must have been a 4-step run too).
  auto first = run::LoadRunConfig(run_file, {"output.dir=" + ws.Path("b"), "output.checkpoint_every=2"});
  run::Train(first, Quiet());
  ASSERT_TRUE(fs::exists(ws.Path("b/checkpoint-2/trainer_state.json")));
  auto second = run::LoadRunConfig(run_file, {"output.dir=" + ws.Path("c")});
  auto options = Quiet();
  options.resume = ws.Path("b/checkpoint-2");
  const auto resumed = run::Train(second, options);
  ASSERT_EQ(resumed.first_step, 2);
  ASSERT_EQ(resumed.steps.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(resumed.steps[i].step, straight.steps[i + 2].step);
    EXPECT_NEAR(resumed.steps[i].loss, straight.steps[i + 2].loss, 1e-6 * straight.steps[i + 2].loss);
    EXPECT_DOUBLE_EQ(resumed.steps[i].lr, straight.steps[i + 2].lr);
  }
  const auto a = ReadAll(ws.Path("a/final/model.safetensors"));
  const auto c = ReadAll(ws.Path("c/final/model.safetensors"));
  ASSERT_EQ(a.size(), c.size());
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], c[i], 1e-6) << "parameter element " << i;
  const auto ma = ReadAll(ws.Path("a/final/optimizer.safetensors"));
  const auto mc = ReadAll(ws.Path("c/final/optimizer.safetensors"));
  for (size_t i = 0; i < ma.size(); ++i) ASSERT_NEAR(ma[i], mc[i], 1e-6) << "moment element " << i;
}

// output.dtype bf16: the exported weights are BF16, and resuming from such a
// checkpoint is still exact (the fp32 master weights are in the optimizer file).
TEST(Resume, FromABf16ExportIsExact) {
  Workspace ws;
  const std::string run_file = ws.WriteRun();
  const auto straight = run::Train(run::LoadRunConfig(run_file, {"output.dir=" + ws.Path("a")}), Quiet());
  run::Train(run::LoadRunConfig(run_file, {"output.dir=" + ws.Path("b"), "output.checkpoint_every=2",
                                           "output.dtype=bf16"}),
             Quiet());
  const auto exported = io::SafetensorsFile::Load(ws.Path("b/checkpoint-2/model.safetensors"));
  for (const auto& t : exported.tensors()) ASSERT_EQ(t.dtype, io::DType::kBF16) << t.name;
  auto options = Quiet();
  options.resume = ws.Path("b/checkpoint-2");
  const auto resumed = run::Train(run::LoadRunConfig(run_file, {"output.dir=" + ws.Path("c")}), options);
  ASSERT_EQ(resumed.steps.size(), 2u);
  for (int i = 0; i < 2; ++i)
    EXPECT_NEAR(resumed.steps[i].loss, straight.steps[i + 2].loss, 1e-6 * straight.steps[i + 2].loss);
  const auto a = ReadAll(ws.Path("a/final/model.safetensors"));
  const auto c = ReadAll(ws.Path("c/final/model.safetensors"));
  for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], c[i], 1e-6) << "parameter element " << i;
  EXPECT_THROW(run::LoadRunConfig(run_file, {"output.dtype=fp16"}), Error);
}

// data.train as two shards (a glob) read shuffled, 10 steps over two epochs
// (7 global batches each); resuming mid-epoch 0 and mid-epoch 1 continues
// the same order: the same losses and weights as an uninterrupted run.
TEST(Resume, ShuffledShardsResumeMidEpochExactly) {
  Workspace ws;
  const std::string run_file = ws.WriteRun();
  fs::create_directories(ws.Path("shards"));
  io::WriteTokenFile(ws.Path("shards/part-0.bin"), {ws.tokens.begin(), ws.tokens.begin() + 300});  // 18 sequences
  io::WriteTokenFile(ws.Path("shards/part-1.bin"), {ws.tokens.begin() + 300, ws.tokens.begin() + 500});  // 12
  const std::vector<std::string> data = {"data.train=[\"" + ws.Path("shards/part-*.bin") + "\"]",
                                         "data.shuffle=true", "train.steps=10"};
  auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.end(), data.begin(), data.end());
    return run::LoadRunConfig(run_file, extra);
  };
  const auto straight = run::Train(with({"output.dir=" + ws.Path("a"), "output.checkpoint_every=3"}), Quiet());
  ASSERT_EQ(straight.steps.size(), 10u);
  std::ifstream state(ws.Path("a/checkpoint-9/trainer_state.json"));
  const auto json = nlohmann::json::parse(state);
  EXPECT_EQ(json.at("data_epoch").get<int>(), 1) << json.dump();
  EXPECT_EQ(json.at("data_position").get<int>(), 2 * 4) << "step 9 is the second batch of epoch 1";
  for (const char* from : {"a/checkpoint-3", "a/checkpoint-9"}) {
    auto options = Quiet();
    options.resume = ws.Path(from);
    const auto resumed = run::Train(with({"output.dir=" + ws.Path(std::string("r") + from[13])}), options);
    ASSERT_EQ(resumed.steps.size(), 10u - resumed.first_step) << from;
    for (size_t i = 0; i < resumed.steps.size(); ++i)
      EXPECT_NEAR(resumed.steps[i].loss, straight.steps[resumed.first_step + i].loss,
                  1e-6 * straight.steps[resumed.first_step + i].loss)
          << from << " step " << resumed.steps[i].step;
    const auto a = ReadAll(ws.Path("a/final/model.safetensors"));
    const auto r = ReadAll(ws.Path(std::string("r") + from[13] + "/final/model.safetensors"));
    ASSERT_EQ(a.size(), r.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], r[i], 1e-6) << from << " parameter element " << i;
  }
  // The shuffle is real: in order, the same shards give other losses.
  const auto in_order = run::Train(
      run::LoadRunConfig(run_file, {"output.dir=" + ws.Path("o"), "data.train=[\"" + ws.Path("shards/part-*.bin") +
                                                                      "\"]", "train.steps=10"}),
      Quiet());
  EXPECT_NE(in_order.steps[0].loss, straight.steps[0].loss);
}

TEST(Resume, AutoPicksTheLatestCheckpointAndTrimsMetrics) {
  Workspace ws;
  const std::string run_file = ws.WriteRun("", "  checkpoint_every: 1\n  keep_checkpoints: 2\n");
  run::Train(run::LoadRunConfig(run_file, {"train.steps=4"}), Quiet());
  // Checkpoints at steps 1..3 (4 is final/); keep_checkpoints: 2 keeps 2 and 3.
  EXPECT_FALSE(fs::exists(ws.Path("out/checkpoint-1")));
  EXPECT_TRUE(fs::exists(ws.Path("out/checkpoint-2")));
  EXPECT_TRUE(fs::exists(ws.Path("out/checkpoint-3")));
  EXPECT_EQ(run::FindLatestCheckpoint(ws.Path("out")), ws.Path("out/final"));
  auto options = Quiet();
  options.resume = "auto";
  const auto more = run::Train(run::LoadRunConfig(run_file, {"train.steps=5"}), options);
  ASSERT_EQ(more.steps.size(), 1u);
  EXPECT_EQ(more.first_step, 4);
  EXPECT_EQ(more.last_step, 5);
  std::ifstream in(ws.Path("out/metrics.jsonl"));
  int lines = 0;
  for (std::string l; std::getline(in, l);) {
    ++lines;
    EXPECT_EQ(nlohmann::json::parse(l).at("step").get<int>(), lines);
  }
  EXPECT_EQ(lines, 5);
}

// With the aux loss off, splitting a batch into micro-batches must not change
// the gradient (the aux loss is per micro-batch by definition, so it would).
TEST(MicroBatching, SameGradientAsOneBatchWithoutAuxLoss) {
  Workspace ws;
  ws.config.router_aux_loss_coef = 0.0;
  ops::SetNumThreads(2);
  const model::ParameterLayout layout(ws.config);
  std::vector<float> params(layout.total());
  model::InitParameters(layout, 0.1, 3, params.data());
  const int B = 4, T = 16;
  std::vector<int32_t> in(B * T), tg(B * T);
  for (int i = 0; i < B * T; ++i) {
    in[i] = static_cast<int32_t>(ws.tokens[i]);
    tg[i] = static_cast<int32_t>(ws.tokens[i + 1]);
  }
  auto grads_with = [&](int R) {
    model::MixtralCpu m(ws.config, layout);
    std::vector<float> g(layout.total(), 0.0f);
    const int per = B / R;
    for (int j = 0; j < R; ++j) {
      m.Forward(params.data(), {in.data() + j * per * T, tg.data() + j * per * T, per, T});
      m.Backward(params.data(), g.data(), 1.0f / R);
    }
    return g;
  };
  const auto g1 = grads_with(1), g2 = grads_with(2), g4 = grads_with(4);
  float scale = 0;
  for (float v : g1) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < g1.size(); ++i) {
    ASSERT_NEAR(g2[i], g1[i], 1e-6f * scale) << i;
    ASSERT_NEAR(g4[i], g1[i], 1e-6f * scale) << i;
  }
}

// A tied model's checkpoint may also hold lm_head.weight (some writers keep
// the shared table twice): accepted when it is the embedding, refused by name
// otherwise.
TEST(Checkpoint, ATiedModelAcceptsACopyOfTheTableAsLmHeadOnly) {
  io::MixtralConfig config;
  config.vocab_size = 16, config.hidden_size = 8, config.intermediate_size = 8, config.num_hidden_layers = 1;
  config.num_attention_heads = 2, config.num_key_value_heads = 1, config.num_local_experts = 2;
  config.num_experts_per_tok = 1, config.tie_word_embeddings = true;
  const model::ParameterLayout layout(config);
  ASSERT_EQ(layout.Find("lm_head.weight"), nullptr);
  ASSERT_EQ(layout.lm_head, layout.embed);
  std::vector<float> params(layout.total());
  model::InitParameters(layout, 0.02, 3, params.data());
  const fs::path dir = fs::temp_directory_path() / ("hetermoe_tied_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto& embed = *layout.Find("model.embed_tokens.weight");
  auto write = [&](const std::string& name, const float* head) {
    std::vector<io::TensorToWrite> out;
    for (const auto& t : layout.tensors()) out.push_back({t.name, t.shape, params.data() + t.offset});
    out.push_back({"lm_head.weight", embed.shape, head});
    io::WriteSafetensors((dir / name).string(), out, {});
    return (dir / name).string();
  };
  std::vector<float> loaded(layout.total());
  EXPECT_NO_THROW(model::LoadParameters(layout, write("copy.safetensors", params.data() + embed.offset), loaded.data()));
  EXPECT_EQ(loaded, params);
  std::vector<float> other(params.begin() + embed.offset, params.begin() + embed.offset + embed.numel);
  other[5] += 1.0f;
  try {
    model::LoadParameters(layout, write("other.safetensors", other.data()), loaded.data());
    ADD_FAILURE() << "a different lm_head.weight was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("\"lm_head.weight\" differs from \"model.embed_tokens.weight\""),
              std::string::npos) << e.what();
  }
  fs::remove_all(dir);
}

TEST(Checkpoint, HoldsAHuggingFaceModelAndResumeState) {
  Workspace ws;
  const auto result = run::Train(run::LoadRunConfig(ws.WriteRun(), {}), Quiet());
  const std::string dir = result.final_dir;
  const auto config = io::LoadMixtralConfig(dir + "/config.json");
  EXPECT_EQ(config.hidden_size, ws.config.hidden_size);
  const auto model = io::SafetensorsFile::Load(dir + "/model.safetensors");
  EXPECT_NE(model.Find("model.layers.1.block_sparse_moe.experts.3.w2.weight"), nullptr);
  EXPECT_NE(model.Find("lm_head.weight"), nullptr);
  const auto state = nlohmann::json::parse(std::ifstream(dir + "/trainer_state.json"));
  EXPECT_EQ(state.at("step").get<int>(), 4);
  EXPECT_EQ(state.at("data_position").get<int>(), 4 * 4 * 16);
  // No temporary folders are left behind.
  for (const auto& e : fs::directory_iterator(ws.Path("out")))
    EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
}

TEST(Checkpoint, ACrashedWriteIsIgnoredAndReplacedCleanly) {
  Workspace ws;
  const std::string run_file = ws.WriteRun();
  run::Train(run::LoadRunConfig(run_file, {"train.steps=1"}), Quiet());
  // What a crash mid-write leaves: a hidden temporary folder, half written.
  fs::create_directories(ws.Path("out/.checkpoint-9.tmp-4242"));
  ws.WriteText("out/.checkpoint-9.tmp-4242/trainer_state.json", "{\"step\": 9, \"data_po");
  EXPECT_EQ(run::FindLatestCheckpoint(ws.Path("out")), ws.Path("out/final"));
  // Resuming and finishing again replaces final/ with the newer state.
  auto options = Quiet();
  options.resume = "auto";
  run::Train(run::LoadRunConfig(run_file, {"train.steps=2"}), options);
  const auto state = nlohmann::json::parse(std::ifstream(ws.Path("out/final/trainer_state.json")));
  EXPECT_EQ(state.at("step").get<int>(), 2);
  for (const auto& e : fs::directory_iterator(ws.Path("out"))) {
    const std::string name = e.path().filename().string();
    EXPECT_TRUE(name.find(".old-") == std::string::npos && name.find("final.tmp") == std::string::npos)
        << name;
  }
}

// --- bad input: one Error naming the file and the problem -----------------

std::string TrainError(const std::string& run_file, const std::vector<std::string>& overrides = {},
                       const std::string& resume = "") {
  try {
    auto options = Quiet();
    options.resume = resume;
    run::Train(run::LoadRunConfig(run_file, overrides), options);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(BadInput, MalformedYaml) {
  Workspace ws;
  ws.WriteText("run.yaml", "model: {config: config.json\ntrain: [");
  const std::string e = TrainError(ws.Path("run.yaml"));
  EXPECT_NE(e.find("run.yaml"), std::string::npos) << e;
  EXPECT_NE(e.find("malformed YAML at line"), std::string::npos) << e;
}

TEST(BadInput, UnknownKeyNamesTheKey) {
  Workspace ws;
  const std::string e = TrainError(ws.WriteRun("  stpes: 3\n"));
  EXPECT_NE(e.find("run.yaml: train.stpes is not a known key"), std::string::npos) << e;
  const std::string e2 = TrainError(ws.WriteRun(), {"output.colour=red"});
  EXPECT_NE(e2.find("output.colour is not a known key"), std::string::npos) << e2;
}

TEST(BadInput, WeightsWithTheWrongShape) {
  Workspace ws;
  const std::string run_file = ws.WriteRun();
  // Weights of a wider model than config.json says.
  io::MixtralConfig other = ws.config;
  other.intermediate_size = 32;
  const model::ParameterLayout layout(other);
  std::vector<float> p(layout.total(), 0.5f);
  model::SaveParameters(layout, ws.Path("wide.safetensors"), p.data());
  const std::string e = TrainError(run_file, {"model.init=" + ws.Path("wide.safetensors")});
  EXPECT_NE(e.find("wide.safetensors"), std::string::npos) << e;
  EXPECT_NE(e.find("w1.weight"), std::string::npos) << e;
  EXPECT_NE(e.find("shape"), std::string::npos) << e;
}

TEST(BadInput, TruncatedAndCorruptSafetensors) {
  Workspace ws;
  const std::string run_file = ws.WriteRun();
  const model::ParameterLayout layout(ws.config);
  std::vector<float> p(layout.total(), 0.5f);
  model::SaveParameters(layout, ws.Path("w.safetensors"), p.data());
  std::string bytes;
  {
    std::ifstream in(ws.Path("w.safetensors"), std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  ws.WriteText("truncated.safetensors", bytes.substr(0, bytes.size() - 100));
  std::string e = TrainError(run_file, {"model.init=" + ws.Path("truncated.safetensors")});
  EXPECT_NE(e.find("truncated.safetensors"), std::string::npos) << e;
  std::string corrupt = bytes;
  corrupt[10] = '\x01';  // inside the JSON header
  ws.WriteText("corrupt.safetensors", corrupt);
  e = TrainError(run_file, {"model.init=" + ws.Path("corrupt.safetensors")});
  EXPECT_NE(e.find("corrupt.safetensors"), std::string::npos) << e;
}

TEST(BadInput, TokenIdOutsideTheVocabulary) {
  Workspace ws;
  ws.tokens[123] = 64;  // vocab_size is 64
  const std::string e = TrainError(ws.WriteRun());
  EXPECT_NE(e.find("tokens.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("64"), std::string::npos) << e;
}

TEST(BadInput, TokenFileShorterThanOneBatch) {
  Workspace ws;
  ws.tokens.resize(4 * 16);  // one batch needs 4*16+1
  const std::string e = TrainError(ws.WriteRun());
  EXPECT_NE(e.find("tokens.bin"), std::string::npos) << e;
  EXPECT_NE(e.find("fewer than one batch"), std::string::npos) << e;
}

TEST(BadInput, UnwritableOutputDir) {
  Workspace ws;
  const std::string run_file = ws.WriteRun();
  ws.WriteText("a-file", "not a folder");
  const std::string e = TrainError(run_file, {"output.dir=" + ws.Path("a-file/out")});
  EXPECT_NE(e.find("a-file/out"), std::string::npos) << e;
  EXPECT_NE(e.find("output.dir"), std::string::npos) << e;
}

TEST(BadInput, SequenceLongerThanThePositions) {
  Workspace ws;
  const std::string e = TrainError(ws.WriteRun(), {"train.seq_len=128"});
  EXPECT_NE(e.find("max_position_embeddings"), std::string::npos) << e;
}

TEST(BadInput, MicroBatchesMustDivideTheBatch) {
  Workspace ws;
  const std::string e = TrainError(ws.WriteRun(), {"train.micro_batches=3"});
  EXPECT_NE(e.find("train.micro_batches"), std::string::npos) << e;
}

TEST(BadInput, RecomputeNamesItsValuesAndNeedsADistributedRun) {
  Workspace ws;
  const std::string run_file = ws.WriteRun();
  std::string e = TrainError(run_file, {"train.recompute=layers"});
  EXPECT_NE(e.find("train.recompute"), std::string::npos) << e;
  EXPECT_NE(e.find("none, attention, experts or full"), std::string::npos) << e;
  e = TrainError(run_file, {"train.recompute=attention"});
  EXPECT_NE(e.find("distributed runs"), std::string::npos) << e;
}

TEST(BadInput, ResumeFromACheckpointOfAnotherModel) {
  Workspace ws;
  const std::string run_file = ws.WriteRun();
  run::Train(run::LoadRunConfig(run_file, {"train.steps=1"}), Quiet());
  ws.config.num_local_experts = 8;
  const std::string other = ws.WriteRun();
  const std::string e = TrainError(other, {}, ws.Path("out/final"));
  EXPECT_NE(e.find("differs"), std::string::npos) << e;
}

}  // namespace
}  // namespace hetermoe
