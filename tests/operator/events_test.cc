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
