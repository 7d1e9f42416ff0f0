#include "kernels/emulator/shared_races.h"

#include <algorithm>

namespace hetermoe::emulator {

void SharedRaceDetector::NewInterval() {
  if (++interval_ == 0) {  // wrapped after 2^32 intervals: forget everything
    std::fill(shadow_.begin(), shadow_.end(), Cell{});
    interval_ = 1;
  }
  std::fill(clocks_.begin(), clocks_.end(), uint16_t{0});
}

void SharedRaceDetector::StartBlock(unsigned threads, size_t bytes) {
  threads_ = threads;
  if (shadow_.size() < bytes) shadow_.resize(bytes);
  clocks_.assign(size_t{threads} * kWarp, 0);
  NewInterval();
}

void SharedRaceDetector::Ignore(size_t offset, size_t bytes) {
  if (ignored_.size() < offset + bytes) ignored_.resize(offset + bytes);
  std::fill(ignored_.begin() + offset, ignored_.begin() + offset + bytes, true);
}

void SharedRaceDetector::Barrier() { NewInterval(); }

void SharedRaceDetector::WarpSync(unsigned first_thread, unsigned mask) {
  uint16_t merged[kWarp] = {};
  bool saturated = false;
  for (unsigned l = 0; l < kWarp; ++l) {
    const unsigned t = first_thread + l;
    if (!(mask >> l & 1u) || t >= threads_) continue;
    uint16_t* known = &clocks_[size_t{t} * kWarp];
    saturated = saturated || known[l] == UINT16_MAX;
    ++known[l];  // accesses before the sync carry the old clock
    for (unsigned k = 0; k < kWarp; ++k) merged[k] = std::max(merged[k], known[k]);
  }
  // 65535 __syncwarps in one barrier interval: start over as if at a barrier
  // (it can hide a race, never invent one).
  if (saturated) return NewInterval();
  for (unsigned l = 0; l < kWarp; ++l) {
    const unsigned t = first_thread + l;
    if ((mask >> l & 1u) && t < threads_) std::copy(merged, merged + kWarp, &clocks_[size_t{t} * kWarp]);
  }
}

SharedRaceDetector::Stamp SharedRaceDetector::StampOf(unsigned thread) const {
  return {interval_, static_cast<uint16_t>(thread), clocks_[size_t{thread} * kWarp + thread % kWarp]};
}

bool SharedRaceDetector::Ordered(const Stamp& s, unsigned thread) const {
  if (s.interval != interval_ || s.thread == thread) return true;
  if (s.thread / kWarp != thread / kWarp) return false;
  return clocks_[size_t{thread} * kWarp + s.thread % kWarp] > s.clock;
}

std::optional<SharedRaceDetector::Race> SharedRaceDetector::Touch(unsigned thread, size_t offset, size_t size,
                                                                  bool write) {
  const size_t end = std::min(offset + size, shadow_.size());
  const Stamp now = StampOf(thread);
  std::optional<Race> race;
  for (size_t b = offset; b < end; ++b) {
    if (b < ignored_.size() && ignored_[b]) continue;
    Cell& cell = shadow_[b];
    auto check = [&](const Stamp& s, bool earlier_write) {
      if (!race && !Ordered(s, thread)) race = Race{b, {s.thread, earlier_write}, {thread, write}};
    };
    check(cell.write, true);
    if (write) {
      check(cell.read, false);
      check(cell.other_read, false);
      cell.write = now;
    } else {
      if (cell.read.interval == interval_ && cell.read.thread != thread) cell.other_read = cell.read;
      cell.read = now;
    }
  }
  return race;
}

}  // namespace hetermoe::emulator
