#include "kernels/precision.h"

#include <algorithm>

#include "common/error.h"

namespace hetermoe::kernels {

std::string_view ComputeDtypeName(ComputeDtype dtype) {
  switch (dtype) {
    case ComputeDtype::kFp32: return "fp32";
    case ComputeDtype::kBf16: return "bf16";
    case ComputeDtype::kFp16: return "fp16";
  }
  return "?";
}

PrecisionPolicy ChoosePrecision(std::string_view requested, int sm) {
  PrecisionPolicy p;
  if (requested == "auto") {
    p.compute = sm >= 80 ? ComputeDtype::kBf16 : ComputeDtype::kFp16;
  } else if (requested == "fp32") {
    p.compute = ComputeDtype::kFp32;
  } else if (requested == "bf16") {
    if (sm < 80)
      throw Error("precision bf16 needs compute capability 8.0 or newer (this GPU is sm_" +
                  std::to_string(sm) + "); use fp16 or fp32");
    p.compute = ComputeDtype::kBf16;
  } else if (requested == "fp16") {
    p.compute = ComputeDtype::kFp16;
  } else {
    throw Error("precision \"" + std::string(requested) + "\" is not one of auto, fp32, bf16, fp16");
  }
  p.dynamic_loss_scaling = p.compute == ComputeDtype::kFp16;
  return p;
}

DynamicLossScaler::DynamicLossScaler(Options options)
    : options_(options), scale_(options.initial_scale) {}

bool DynamicLossScaler::Update(bool found_nonfinite) {
  if (found_nonfinite) {
    scale_ = std::max(options_.min_scale, scale_ * options_.backoff_factor);
    clean_steps_ = 0;
    ++skipped_;
    if (++skipped_in_a_row_ > options_.max_consecutive_skips)
      throw Error("fp16 loss scaling: " + std::to_string(skipped_in_a_row_) +
                  " steps in a row had inf/nan gradients (loss scale now " + std::to_string(scale_) +
                  "): the model overflows fp16; train with train.precision bf16 or fp32, or a lower train.lr");
    return false;
  }
  skipped_in_a_row_ = 0;
  if (++clean_steps_ >= options_.growth_interval) {
    scale_ *= options_.growth_factor;
    clean_steps_ = 0;
  }
  return true;
}

}  // namespace hetermoe::kernels
