// Data races on a thread block's shared memory, found the way a GPU would
// punish them: two threads of the block touch the same byte, at least one of
// them writes, and nothing orders the two accesses. What orders them:
//   - a __syncthreads between them (the block's barrier: every access before
//     it happens before every access after it);
//   - for two lanes of one warp, a __syncwarp both took part in after the
//     first access (CUDA promises memory ordering among the lanes of its
//     mask; shuffles, ballots and mma.sync promise none).
// Pure logic over byte offsets (no CUDA, no fibers): the block runner maps
// shared addresses to offsets and calls it on every access the kernels'
// instrumentation reports (race_hooks.cc).
//
// Per byte it keeps the last write and the last two reads by different
// threads, each stamped with its barrier interval and, for warp ordering, the
// accessing lane's __syncwarp clock (a vector clock over the 32 lanes of
// each warp, reset at every barrier). A race with a read older than the last
// two may go unreported; a reported race is always real.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

namespace hetermoe::emulator {

class SharedRaceDetector {
 public:
  struct Access {
    unsigned thread = 0;  // linear thread index in the block
    bool write = false;
  };
  struct Race {
    size_t offset = 0;  // the first byte both touch
    Access earlier, later;
  };

  // A new block of `threads` threads whose shared memory spans `bytes`
  // offsets: nothing from an earlier block can race with it.
  void StartBlock(unsigned threads, size_t bytes);
  // Bytes no race is reported on, in every block (the emulator's own
  // bookkeeping that happens to sit among the shared arrays).
  void Ignore(size_t offset, size_t bytes);
  // Every thread passed __syncthreads.
  void Barrier();
  // The lanes of `mask` in the warp whose lane 0 is thread `first_thread`
  // completed a __syncwarp together.
  void WarpSync(unsigned first_thread, unsigned mask);
  // Thread `thread` reads or writes bytes [offset, offset + size); returns the
  // first race it completes, if any.
  std::optional<Race> Touch(unsigned thread, size_t offset, size_t size, bool write);

 private:
  static constexpr unsigned kWarp = 32;
  struct Stamp {
    uint32_t interval = 0;  // 0: never touched
    uint16_t thread = 0;
    uint16_t clock = 0;  // the thread's own __syncwarp clock at the access
  };
  struct Cell {
    Stamp write, read, other_read;  // other_read: a different thread than read
  };
  Stamp StampOf(unsigned thread) const;
  // Whether `s` happens before the current point of `thread`.
  bool Ordered(const Stamp& s, unsigned thread) const;
  void NewInterval();

  uint32_t interval_ = 0;
  unsigned threads_ = 0;
  std::vector<Cell> shadow_;
  std::vector<bool> ignored_;
  // clocks_[t * 32 + l]: what thread t knows of the __syncwarp clock of lane
  // l of its warp (its own entry is its clock).
  std::vector<uint16_t> clocks_;
};

}  // namespace hetermoe::emulator
