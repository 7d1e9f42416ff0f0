// The order in which a rank runs its work in one training step. Pure logic.
//
// Tasks (layers 0..L-1, local micro-batches 0..R-1):
//   AttnFwd(l, j)  [attention ranks] combine layer l-1's expert outputs (or
//                  embed, l = 0), run attention + router of layer l, dispatch
//   ExpFwd(l, j)   [expert owners]   receive layer l's rows of micro-batch j
//                  from every attention rank, run the owned experts, send back
//   Head(j)        [attention ranks] combine layer L-1, final norm, head, loss,
//                  and their backward; dispatch layer L-1's output gradients
//   ExpBwd(l, j)   [expert owners]   expert backward, send input gradients back
//   AttnBwd(l, j)  [attention ranks] attention backward of layer l, then
//                  layer l-1's combine backward and its dispatch (or the
//                  embedding backward, l = 0)
//
// zebra (HeterMoE Theorem 1): forward breadth-first over micro-batches layer
// by layer, forward + backward per micro-batch at the last stage, backward
// breadth-first in reverse. A rank that both runs attention and owns experts
// of layer l (Asym-EA) runs them after the attention of all micro-batches of
// that layer (and before it in backward).
// sequential and ep: one micro-batch at a time through every layer and back,
// so nothing overlaps.
#pragma once

#include <string>
#include <vector>

#include "trainer/parallel/placement.h"

namespace hetermoe::parallel {

struct Task {
  enum class Kind { kAttnFwd, kExpFwd, kHead, kExpBwd, kAttnBwd } kind;
  int layer = 0;  // unused for kHead
  int micro = 0;
  bool operator==(const Task&) const = default;
};

// in_flight (zebra): the micro-batches run in waves of that many, each wave
// zebra's order through every layer and back before the next starts, so
// activations of at most in_flight micro-batches are alive (0: all R at once).
std::vector<Task> TaskOrder(const Placement& placement, int rank, int in_flight = 0);
std::string ToString(const Task& t);

}  // namespace hetermoe::parallel
