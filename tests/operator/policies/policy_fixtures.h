// Fixtures for the policy tests: the tiny job (test_jobs.h) observed at kT0
// with its model config and the A40/V100 nodes, pods made by hand, and the
// decision a policy starts from (the job's status, as DecideJob starts).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "operator/core/children.h"
#include "operator/core/conditions.h"
#include "operator/core/job_reconcile.h"
#include "tests/operator/test_jobs.h"

namespace hetermoe::op::fixtures {

inline constexpr int64_t kT0 = 1747735200;  // 2025-05-20T10:00:00Z

inline JobObservation TinyObservation() {
  JobObservation o;
  o.job = TinyJob();
  o.model_config = o.job.spec.model.config;
  o.nodes = A40V100Nodes();
  o.now = kT0;
  return o;
}

inline ObservedPod Pod(Role role, int64_t index, const std::string& phase, int64_t attempt = 0,
                       bool deleting = false) {
  ObservedPod p;
  p.name = PodName("tiny", role, index);
  p.role = role;
  p.index = index;
  p.attempt = attempt;
  p.phase = phase;
  p.deleting = deleting;
  return p;
}

// The tiny job's six pods (2 attention, 4 expert) of `attempt`, all in `phase`.
inline std::vector<ObservedPod> AllPods(const std::string& phase, int64_t attempt = 0) {
  std::vector<ObservedPod> pods;
  for (int64_t i = 0; i < 2; ++i) pods.push_back(Pod(Role::kAttention, i, phase, attempt));
  for (int64_t i = 0; i < 4; ++i) pods.push_back(Pod(Role::kExpert, i, phase, attempt));
  return pods;
}

inline std::vector<const ObservedPod*> Pointers(const std::vector<ObservedPod>& pods) {
  std::vector<const ObservedPod*> out;
  for (const ObservedPod& p : pods) out.push_back(&p);
  return out;
}

inline JobDecision StartDecision(const JobObservation& o) {
  JobDecision d;
  d.status = o.job.status;
  return d;
}

// "<status>/<reason>" of condition `type`, "" when absent.
inline std::string ConditionOf(const JobStatus& s, const char* type) {
  const Condition* c = FindCondition(s, type);
  return c ? c->status + "/" + c->reason : "";
}

}  // namespace hetermoe::op::fixtures
