// Next-token cross-entropy over logits[N, V].
#pragma once

#include <cstdint>

namespace hetermoe::ops {

// Returns the mean loss over the N rows.
double CrossEntropyForward(int64_t N, int64_t V, const float* logits, const int32_t* targets);
// dlogits[N, V] = (softmax(logits) - onehot(target)) * scale  (may alias logits).
void CrossEntropyBackward(int64_t N, int64_t V, const float* logits, const int32_t* targets,
                          float scale, float* dlogits);

}  // namespace hetermoe::ops
