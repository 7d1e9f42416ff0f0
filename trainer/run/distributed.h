// Glue between the training loop and the distributed engine: joining a run
// from the environment (one rank per process, as in a pod) and the local
// launcher that starts every rank on this machine.
#pragma once

#include <memory>
#include <string>

#include "common/mixtral_config.h"
#include "trainer/backend/backend.h"
#include "trainer/comm/communicator.h"
#include "trainer/model/parameters.h"
#include "trainer/parallel/engine.h"
#include "trainer/parallel/placement.h"
#include "trainer/parallel/trace.h"
#include "trainer/run/run_config.h"
#include "trainer/run/trainer.h"

namespace hetermoe::run {

struct DistributedRun {
  int rank = 0;
  int world_size = 1;
  parallel::Placement placement;
  std::unique_ptr<comm::World> world;
  std::unique_ptr<parallel::Tracer> tracer;
  std::unique_ptr<backend::Backend> backend;
  std::vector<bool> owned;  // per tensor of the layout: held by this rank (its Upload takes just these)
  parallel::DistributedBackend* engine = nullptr;  // `backend`, for what only a distributed run does
};

// Reads RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT (and HETERMOE_LISTEN_ADDR
// or POD_IP for this rank's address), checks them against the run file's
// parallel section, meets the other ranks and builds this rank's engine.
std::unique_ptr<DistributedRun> JoinDistributedRun(const RunConfig& rc, const io::MixtralConfig& config,
                                                   const model::ParameterLayout& layout,
                                                   const TrainOptions& options);

// Writes this rank's part of the Chrome trace (<path>.rank-<r>.json).
void WriteTrace(const DistributedRun& run, const std::string& path);

// The launcher side of `parallel.launch: local`.
TrainResult LaunchLocally(const RunConfig& rc, const TrainOptions& options);

}  // namespace hetermoe::run
