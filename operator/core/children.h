// Children: the objects a HeterMoEJob owns, built from the job and its
// placement. Pure; the reconciler creates them and the golden tests
// (tests/operator/golden/) pin their exact JSON.
//
//  - one headless Service named after the job (publishNotReadyAddresses),
//    so pod <job>-attention-0 is <job>-attention-0.<job>.<ns>.svc;
//  - one ConfigMap <job>-plan with plan.json, run.yaml (the trainer's run
//    file) and config.json (the model), mounted at /etc/hetermoe;
//  - attention pods <job>-attention-<i> and expert pods <job>-expert-<j>,
//    ranked as the engine orders them (RankOf: per ZP group, its attention
//    ranks then its expert ranks), restartPolicy Never (restarts are
//    whole-job, from the last checkpoint), node affinity on the planned GPU
//    products, nvidia.com/gpu limits, env MASTER_ADDR/MASTER_PORT/
//    WORLD_SIZE/RANK, POD_IP (downward API: the address the rank binds) and
//    the role; labels hetermoe.io/job-name, role, replica-index, rank and
//    attempt; a controller ownerReference. The trainer's error line becomes
//    the container's termination message.
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

// The trainer's run file for this job and plan (YAML text): model, data,
// train, output (OutputDir) and the parallel section every rank joins with.
std::string RunFileYaml(const HeterMoEJob& job, const PlacementDecision& placement);

// Where a job's checkpoints and metrics go inside its pods: its own folder
// on the claim (<mountPath>/<namespace>/<name>), so jobs sharing a claim never
// resume from each other's checkpoints; /tmp/hetermoe-out without a claim.
std::string OutputDir(const HeterMoEJob& job);

}  // namespace hetermoe::op
