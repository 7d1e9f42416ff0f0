// Children: the objects a HeterMoEJob owns, built from the job and its
// placement. Pure; the reconciler creates them and the golden tests
// (tests/operator/golden/) pin their exact JSON.
//
//  - one headless Service named after the job (publishNotReadyAddresses),
//    so pod <job>-attention-0 is <job>-attention-0.<job>.<ns>.svc;
//  - one ConfigMap <job>-plan with plan.json, run.yaml (the trainer's run
//    file) and config.json (the model), mounted at /etc/hetermoe;
//  - attention pods <job>-attention-<i> (ranks 0..A-1) and expert pods
//    <job>-expert-<j> (ranks A..A+E-1), restartPolicy Never (restarts are
//    whole-job, from the last checkpoint), node affinity on the planned GPU
//    products, nvidia.com/gpu limits, env MASTER_ADDR/MASTER_PORT/
//    WORLD_SIZE/RANK and the role; labels hetermoe.io/job-name, role,
//    replica-index, rank and attempt; a controller ownerReference.
//  - with schedulingPolicy.scheduler volcano, a PodGroup.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "operator/api/hetermoejob.h"
#include "operator/core/placement.h"

namespace hetermoe::op {

inline constexpr const char* kLabelJobName = "hetermoe.io/job-name";
inline constexpr const char* kLabelRole = "hetermoe.io/role";
inline constexpr const char* kLabelReplicaIndex = "hetermoe.io/replica-index";
inline constexpr const char* kLabelRank = "hetermoe.io/rank";
inline constexpr const char* kLabelAttempt = "hetermoe.io/attempt";
inline constexpr const char* kPlanMountPath = "/etc/hetermoe";
inline constexpr const char* kTrainerContainer = "trainer";

std::string PodName(const std::string& job, Role role, int64_t index);
std::string PlanConfigMapName(const std::string& job);

nlohmann::json OwnerReference(const JobMeta& job);
nlohmann::json BuildService(const HeterMoEJob& job);
// `model_config_text` is config.json as resolved by the reconciler.
nlohmann::json BuildPlanConfigMap(const HeterMoEJob& job, const PlacementDecision& placement,
                                  const std::string& model_config_text, int64_t attempt);
nlohmann::json BuildPod(const HeterMoEJob& job, const PlacementDecision& placement, Role role, int64_t index,
                        int64_t attempt);
nlohmann::json BuildPodGroup(const HeterMoEJob& job, const PlacementDecision& placement);

// The trainer's run file for this job (YAML text).
std::string RunFileYaml(const JobSpec& spec);

}  // namespace hetermoe::op
