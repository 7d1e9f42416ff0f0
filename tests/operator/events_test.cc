// Which Events a reconcile reports, and the Event object's shape.
#include <gtest/gtest.h>

#include "operator/core/conditions.h"
#include "operator/core/events.h"

namespace hetermoe::op {
namespace {

TEST(JobEvents, OnePerConditionThatTurnedTrueAndOneForCreatedPods) {
  JobStatus before, now;
  SetCondition(before, kCondCreated, true, "Created", "pods created", "t0");
  now = before;
  SetCondition(now, kCondRunning, true, "Running", "all 6 pods running", "t1");
  SetCondition(now, kCondRestarting, true, "PodFailed", "pod tiny-expert-3 failed: exit code 1", "t1");
  const auto events = JobEvents(before, now, 2);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0], (JobEvent{"Normal", "CreatedPods", "Created 2 pods"}));
  EXPECT_EQ(events[1], (JobEvent{"Normal", "Running", "all 6 pods running"}));
  EXPECT_EQ(events[2], (JobEvent{"Warning", "PodFailed", "pod tiny-expert-3 failed: exit code 1"}));
  EXPECT_TRUE(JobEvents(now, now, 0).empty()) << "nothing changed, nothing to report";
  JobStatus failed = now;
  SetCondition(failed, kCondFailed, true, "BackoffLimitExceeded", "3 restarts", "t2");
  const auto f = JobEvents(now, failed, 0);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].type, "Warning");
  EXPECT_EQ(JobEvents(before, before, 1)[0].message, "Created 1 pod");
}

// A pod the API server refused: one Warning carrying its message, repeated
// only when the message changes (the reconcile retries with backoff).
TEST(JobEvents, RefusedChildIsOneWarningPerMessage) {
  JobStatus before, now;
  const std::string quota = "POST /api/v1/namespaces/a/pods: 403 Forbidden: pods \"tiny-attention-0\" is forbidden: "
                            "exceeded quota: no-pods, requested: pods=1, used: pods=0, limited: pods=0";
  SetCondition(now, kCondCreated, false, "CreateFailed", quota, "t1");
  auto events = JobEvents(before, now, 0);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0], (JobEvent{"Warning", "FailedCreate", quota}));
  EXPECT_TRUE(JobEvents(now, now, 0).empty()) << "the same refusal again: no new Event";
  JobStatus other = now;
  SetCondition(other, kCondCreated, false, "CreateFailed", "another message", "t2");
  EXPECT_EQ(JobEvents(now, other, 0).size(), 1u);
  JobStatus unschedulable;
  SetCondition(unschedulable, kCondCreated, false, "Unschedulable", "0 fit", "t1");
  EXPECT_TRUE(JobEvents(before, unschedulable, 0).empty());
}

TEST(JobEvents, EventObjectNamesTheJobAndIsUniquePerNanosecond) {
  JobMeta job;
  job.name = "tiny";
  job.namespace_ = "team-a";
  job.uid = "u-1";
  job.resource_version = "42";
  const auto e = EventObject(job, {"Warning", "PodFailed", "boom"}, "op-0", 1748000000123456789LL);
  EXPECT_EQ(e["metadata"]["name"], "tiny.184224bd22bdcd15");
  EXPECT_EQ(e["metadata"]["namespace"], "team-a");
  EXPECT_EQ(e["involvedObject"]["kind"], "HeterMoEJob");
  EXPECT_EQ(e["involvedObject"]["uid"], "u-1");
  EXPECT_EQ(e["type"], "Warning");
  EXPECT_EQ(e["reason"], "PodFailed");
  EXPECT_EQ(e["firstTimestamp"], "2025-05-23T11:33:20Z");
  EXPECT_EQ(e["count"], 1);
}

}  // namespace
}  // namespace hetermoe::op
