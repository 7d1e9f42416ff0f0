// Learning-rate schedules, evaluated for optimizer step s (1-based).
#pragma once

#include <cstdint>
#include <string>

namespace hetermoe::optim {

struct LrSchedule {
  enum class Kind { kConstant, kCosine } kind = Kind::kConstant;
  double lr = 1e-3;
  int64_t warmup_steps = 0;  // cosine only: linear warm-up lr*s/warmup for s <= warmup
  double min_lr = 0.0;       // cosine only: the floor reached at the last step
  int64_t total_steps = 1;

  // constant: lr. cosine: warm-up, then
  //   min_lr + (lr - min_lr) * (1 + cos(pi * (s - warmup) / max(1, total - warmup))) / 2.
  double At(int64_t step) const;
};

}  // namespace hetermoe::optim
