#include "kernels/emulator/global_races.h"

#include <algorithm>

namespace hetermoe::emulator {

void GlobalRaceDetector::ClearPages() {
  for (size_t i = 0; i < used_; ++i) std::fill(pool_[i].get(), pool_[i].get() + kPageBytes, Cell{});
  pages_.clear();
  used_ = 0;
  last_page_ = ~uintptr_t{0};
  last_cells_ = nullptr;
}

void GlobalRaceDetector::StartLaunch() {
  // Past the page budget, or long before the block numbers wrap: start clean.
  if (used_ > kMaxPages || block_ > (1u << 31)) {
    ClearPages();
    block_ = 0;
  }
  launch_first_ = block_ + 1;
  grid_index_.clear();
  interval_ = 0;
}

void GlobalRaceDetector::StartBlock(uint32_t block) {
  ++block_;  // stamps carry the number across launches; races report the grid index
  grid_index_.push_back(block);
  interval_ = 1;
}

void GlobalRaceDetector::Barrier() {
  // A block past 2^21 - 1 barriers forgets every access so far (which can
  // hide a race, never invent one).
  if (++interval_ > kMaxInterval) {
    ClearPages();
    interval_ = 1;
  }
}

GlobalRaceDetector::Cell* GlobalRaceDetector::Page(uintptr_t page) {
  if (page == last_page_) return last_cells_;
  auto [it, added] = pages_.try_emplace(page, nullptr);
  if (added) {
    if (used_ == pool_.size()) pool_.push_back(std::make_unique<Cell[]>(kPageBytes));
    it->second = pool_[used_++].get();
  }
  last_page_ = page;
  last_cells_ = it->second;
  return it->second;
}

bool GlobalRaceDetector::Ordered(const Stamp& s, uint32_t thread) const {
  if (s.block < launch_first_) return true;  // never touched, or by an earlier launch
  if (s.block != block_) return false;       // another block of this launch
  return s.thread == thread || s.interval != interval_;  // the same thread, or a barrier between
}

std::optional<GlobalRaceDetector::Race> GlobalRaceDetector::Touch(uint32_t thread, uintptr_t address, size_t size,
                                                                  bool write) {
  Stamp now;
  now.block = block_;
  now.thread = thread;
  now.interval = interval_;
  std::optional<Race> race;
  for (uintptr_t a = address; a < address + size; ++a) {
    Cell& cell = Page(a / kPageBytes)[a % kPageBytes];
    auto check = [&](const Stamp& s, bool earlier_write) {
      if (!race && !Ordered(s, thread))
        race = Race{a, {grid_index_[s.block - launch_first_], s.thread, earlier_write},
                    {grid_index_[block_ - launch_first_], thread, write}};
    };
    check(cell.write, true);
    if (write) {
      check(cell.read, false);
      check(cell.other_read, false);
      cell.write = now;
    } else {
      if (cell.read.block != block_ || cell.read.thread != thread) cell.other_read = cell.read;
      cell.read = now;
    }
  }
  return race;
}

}  // namespace hetermoe::emulator
