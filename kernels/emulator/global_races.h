// Data races on device (global) memory within one kernel launch, found the
// way a GPU would punish them: two threads touch the same byte, at least one
// of them writes, and nothing orders the two accesses. Within a launch the
// only order is a block's __syncthreads (every access before it happens
// before every access after it, for that block's threads); blocks of a grid
// are unordered (the project's kernels use no atomics or grid-wide
// synchronisation), so a byte one block writes and another block reads or
// writes in the same launch is a race whatever order they ran in. Two
// launches on a stream are ordered: each launch starts afresh.
//
// Pure logic over addresses (no CUDA, no fibers): the block runner calls it
// on every device-memory access the kernels' instrumentation reports
// (race_hooks.h), alongside the shared-memory check (shared_races.h).
//
// Per byte it keeps the last write and the last two reads by different
// threads, each stamped with (block, thread, barrier interval), in shadow
// pages of 4 KiB allocated as launches touch them. Blocks are numbered
// across launches, so a stamp from an earlier launch is told apart without
// clearing the pages (they are cleared when they outgrow 64 MiB). A race with a read
// older than the last two may go unreported, and lanes of one warp are not
// ordered by __syncwarp here (an ordering through global memory that relies
// on it is reported); a reported race is otherwise always real.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

namespace hetermoe::emulator {

class GlobalRaceDetector {
 public:
  struct Access {
    uint32_t block = 0;   // linear block index in the launch's grid
    uint32_t thread = 0;  // linear thread index in the block
    bool write = false;
  };
  struct Race {
    uintptr_t address = 0;  // the first byte both touch
    Access earlier, later;
  };

  // A new launch: nothing from an earlier one can race with it.
  void StartLaunch();
  // Block `block` (its linear index in the grid) runs next; blocks run one
  // after another.
  void StartBlock(uint32_t block);
  // Every thread of the running block passed __syncthreads.
  void Barrier();
  // Thread `thread` of the running block reads or writes bytes
  // [address, address + size); returns the first race it completes, if any.
  std::optional<Race> Touch(uint32_t thread, uintptr_t address, size_t size, bool write);

 private:
  static constexpr size_t kPageBytes = 4096;
  static constexpr uint32_t kMaxInterval = (1u << 21) - 1;
  static constexpr size_t kMaxPages = (64u << 20) / (kPageBytes * 24);
  struct Stamp {
    uint32_t block = 0;  // the block's number across launches; 0: never touched
    uint32_t thread : 11;
    uint32_t interval : 21;
    Stamp() : thread(0), interval(0) {}
  };
  struct Cell {
    Stamp write, read, other_read;  // other_read: another thread than read's
  };
  Cell* Page(uintptr_t page);
  bool Ordered(const Stamp& s, uint32_t thread) const;
  void ClearPages();

  uint32_t block_ = 0;         // the running block's number across launches
  uint32_t launch_first_ = 1;  // the number of the launch's first block
  std::vector<uint32_t> grid_index_;  // per block of the launch, by number - launch_first_
  uint32_t interval_ = 0;
  std::unordered_map<uintptr_t, Cell*> pages_;  // page number -> shadow cells
  std::vector<std::unique_ptr<Cell[]>> pool_;   // shadow pages, reused across launches
  size_t used_ = 0;
  uintptr_t last_page_ = ~uintptr_t{0};
  Cell* last_cells_ = nullptr;
};

}  // namespace hetermoe::emulator
