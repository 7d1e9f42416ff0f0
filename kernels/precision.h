// The precision policy per GPU generation, and dynamic loss scaling. Pure
// host logic (no CUDA calls), so it is tested on the CPU.
//
// Master weights, gradients and optimizer state are always fp32. What
// changes per GPU is the format the GEMMs read their operands in:
//   - bf16 on sm_80 and newer (Ampere, Ada, Hopper): bf16 tensor cores, the
//     fp32 exponent range, no loss scaling needed;
//   - fp16 on sm_70/sm_75 (Volta, Turing): no bf16 tensor cores there, and
//     fp16's narrow range needs dynamic loss scaling of the gradients;
//   - fp32 everywhere, on request (the reference path; matches the CPU).
// A distributed run whose activations cross GPU kinds uses the common format
// of its GPUs (planner::CommonPrecision): fp16 as soon as one is pre-Ampere.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace hetermoe::kernels {

enum class ComputeDtype { kFp32, kBf16, kFp16 };
std::string_view ComputeDtypeName(ComputeDtype dtype);

struct PrecisionPolicy {
  ComputeDtype compute = ComputeDtype::kFp32;
  bool dynamic_loss_scaling = false;  // true exactly for fp16
};

// requested: "auto" (the generation's default), "fp32", "bf16" or "fp16";
// sm = 10 * major + minor of the device's compute capability. Throws
// hetermoe::Error for an unknown name, or bf16 below sm_80.
PrecisionPolicy ChoosePrecision(std::string_view requested, int sm);

// Dynamic loss scaling as torch.cuda.amp.GradScaler: the loss is multiplied
// by scale() before backward; a step whose gradients hold inf/nan is skipped
// and the scale halved; after growth_interval clean steps in a row the scale
// doubles. More than max_consecutive_skips skipped steps in a row (with the
// defaults: the scale fell from 65536 to 1 and the gradients still overflow)
// is a hetermoe::Error instead of a run that trains nothing forever.
// Not thread-safe.
class DynamicLossScaler {
 public:
  struct Options {
    double initial_scale = 65536.0;
    double growth_factor = 2.0;
    double backoff_factor = 0.5;
    int64_t growth_interval = 2000;
    double min_scale = 1.0;  // never scale below this (1 = no scaling)
    int64_t max_consecutive_skips = 32;
  };
  DynamicLossScaler() : DynamicLossScaler(Options{}) {}
  explicit DynamicLossScaler(Options options);

  double scale() const { return scale_; }
  // Call once per optimizer step with whether any gradient was non-finite;
  // returns true when the step should be applied.
  bool Update(bool found_nonfinite);
  int64_t skipped_steps() const { return skipped_; }

 private:
  Options options_;
  double scale_;
  int64_t clean_steps_ = 0;
  int64_t skipped_ = 0;
  int64_t skipped_in_a_row_ = 0;
};

}  // namespace hetermoe::kernels
