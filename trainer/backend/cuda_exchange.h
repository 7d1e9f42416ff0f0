// The CUDA RowExchange (model/stages.h): the distributed engine's rows moved
// GPU to GPU over NCCL, one communicator per channel. Sends are packed on the
// model's compute stream (gathering unique rows, or summing a token's rows,
// and casting to the wire format); the NCCL group runs on the channel's own
// stream once the packing is done, and only NCCL runs there. Wait blocks the
// host on the group's event, with the communicator's dead-peer timeout, then
// unpacks the receives (fanned out, cast to fp32) on the compute stream,
// before the compute that reads them. The wire carries the run's compute
// format: bf16 or fp16 in 16-bit runs, fp32 otherwise. Buffers live until
// WaitAll (the end of a step). Needs NCCL.
//
// Index lists go up from pageable host memory, which on a GPU synchronises
// the host with the compute stream once per group; pinned staging would
// remove that.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "trainer/backend/cuda_model.h"
#include "trainer/model/stages.h"

namespace hetermoe::backend {

std::string NewRowExchangeId();
size_t RowExchangeIdBytes();  // the size of every id NewRowExchangeId makes
// Gradient sums over NCCL, in place in the model's gradients: one fp32
// all-reduce per bucket of adjacent ranges (at most kGradBucketFloats), on
// the communicator's stream after the compute so far, beside later compute;
// Wait returns once the sums are in (a dead peer: RetryableError after the
// timeout).
constexpr int64_t kGradBucketFloats = int64_t{1} << 24;  // 64 MiB
std::unique_ptr<model::GradReducer> MakeCudaGradReducer(DeviceModel& model, const std::string& id, int rank,
                                                        int size, std::chrono::milliseconds timeout);

std::unique_ptr<model::RowExchange> MakeCudaRowExchange(DeviceModel& model, const std::vector<std::string>& ids,
                                                        int rank, int size, std::chrono::milliseconds timeout);

}  // namespace hetermoe::backend
