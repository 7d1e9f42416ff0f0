// status.progress from the trainer's Prometheus text, and the metric names
// checked against the trainer's own source (so a rename breaks this test).
#include "operator/core/progress.h"

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

namespace hetermoe::op {
namespace {

const char* kTrainerPage =
    "# HELP hetermoe_trainer_step Optimizer steps completed\n"
    "# TYPE hetermoe_trainer_step gauge\n"
    "hetermoe_trainer_step 250\n"
    "# TYPE hetermoe_trainer_loss gauge\n"
    "hetermoe_trainer_loss 2.125\n"
    "hetermoe_trainer_tokens_per_second 4096\n"
    "hetermoe_trainer_val_loss 2.375\n"
    "hetermoe_trainer_expert_tokens_total{layer=\"0\",expert=\"1\"} 77\n"
    "hetermoe_trainer_step_seconds_bucket{le=\"0.1\"} 3\n";

TEST(Progress, FromTrainerMetrics) {
  TrainingSpec t;
  t.steps = 1000;
  t.global_batch = 16;
  t.seq_len = 128;
  auto p = ProgressFromMetrics(kTrainerPage, t, "2025-05-20T10:00:00Z");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->step, 250);
  EXPECT_EQ(p->total_steps, 1000);
  EXPECT_DOUBLE_EQ(p->percentage, 25.0);
  EXPECT_DOUBLE_EQ(*p->loss, 2.125);
  EXPECT_DOUBLE_EQ(*p->val_loss, 2.375);
  EXPECT_DOUBLE_EQ(*p->tokens_per_second, 4096);
  EXPECT_DOUBLE_EQ(*p->eta_seconds, 750.0 * 16 * 128 / 4096);  // 375 s
  EXPECT_EQ(p->update_time, "2025-05-20T10:00:00Z");
}

TEST(Progress, NoStepYetAndOddSamples) {
  TrainingSpec t;
  t.steps = 10;
  EXPECT_FALSE(ProgressFromMetrics("# nothing yet\n", t, "now"));
  auto p = ProgressFromMetrics("hetermoe_trainer_step 3\nhetermoe_trainer_loss nan\nhetermoe_trainer_tokens_per_second 0\n", t, "now");
  ASSERT_TRUE(p);
  EXPECT_FALSE(p->loss) << "NaN loss is not reported";
  EXPECT_FALSE(p->eta_seconds) << "no throughput, no ETA";
  EXPECT_FALSE(p->val_loss) << "no evaluation yet, no validation loss";
  EXPECT_DOUBLE_EQ(p->percentage, 30.0);
}

// Rank 0's termination message when it succeeded (hetermoe-trainer writes it).
TEST(Progress, FromTheTrainersFinalSummary) {
  TrainingSpec t;
  t.steps = 30;
  t.global_batch = 8;
  t.seq_len = 64;
  auto p = ProgressFromSummary("{\"step\": 30, \"loss\": 2.5, \"tokens_per_second\": 4096}", t, "now");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->step, 30);
  EXPECT_DOUBLE_EQ(p->percentage, 100.0);
  EXPECT_DOUBLE_EQ(*p->loss, 2.5);
  EXPECT_DOUBLE_EQ(*p->eta_seconds, 0.0);
  EXPECT_FALSE(p->val_loss);
  p = ProgressFromSummary("{\"step\": 30, \"loss\": 2.5, \"tokens_per_second\": 4096, \"val_loss\": 2.75}", t, "now");
  ASSERT_TRUE(p);
  EXPECT_DOUBLE_EQ(*p->val_loss, 2.75);
  EXPECT_FALSE(ProgressFromSummary("hetermoe-trainer: error: x", t, "now"));
  EXPECT_FALSE(ProgressFromSummary("{\"loss\": 1}", t, "now"));
  EXPECT_FALSE(ProgressFromSummary("", t, "now"));
}

TEST(Progress, MetricNamesAreTheTrainers) {
  std::ifstream in(std::string(HETERMOE_SOURCE_DIR) + "/trainer/run/metrics.cc");
  ASSERT_TRUE(in);
  std::stringstream source;
  source << in.rdbuf();
  for (const char* name : {kTrainerStepMetric, kTrainerLossMetric, kTrainerTokensPerSecondMetric, kTrainerValLossMetric})
    EXPECT_NE(source.str().find(std::string("\"") + name + "\""), std::string::npos) << name;
}

}  // namespace
}  // namespace hetermoe::op
