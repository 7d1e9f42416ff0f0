#include "kernels/emulator/block_runner.h"

#include <boost/context/fiber.hpp>
#include <boost/context/pooled_fixedsize_stack.hpp>
#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <sstream>
#include <string_view>

#include "kernels/emulator/guarded_memory.h"

namespace hetermoe::emulator {

namespace ctx = boost::context;

namespace {

constexpr int kWarpSize = 32;
constexpr size_t kFiberStackBytes = 64 * 1024;  // kernels keep small frames

thread_local BlockRunner* active_runner = nullptr;

const char* OpName(WarpOp op) {
  switch (op) {
    case WarpOp::kShflXor: return "__shfl_xor_sync";
    case WarpOp::kShflDown: return "__shfl_down_sync";
    case WarpOp::kShfl: return "__shfl_sync";
    case WarpOp::kBallot: return "__ballot_sync";
    case WarpOp::kSyncWarp: return "__syncwarp";
    case WarpOp::kMma: return "mma.sync";
  }
  return "?";
}

// "3, 5-31" from sorted thread indices.
std::string Ranges(const std::vector<unsigned>& ids) {
  std::ostringstream out;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (i > 0) out << ", ";
    out << ids[i];
    if (j > i) out << "-" << ids[j];
    i = j + 1;
  }
  return out.str();
}

BlockRunner& RunnerOrDie(const char* what) {
  if (active_runner == nullptr) {
    std::fprintf(stderr, "CUDA emulator: %s called outside a kernel\n", what);
    std::abort();
  }
  return *active_runner;
}

float HalfToFloat(uint16_t bits, MmaInput input) {
  if (input == MmaInput::kBf16) {
    const uint32_t word = uint32_t{bits} << 16;
    float f;
    std::memcpy(&f, &word, sizeof f);
    return f;
  }
  __half h;
  std::memcpy(&h, &bits, sizeof h);
  return __half2float(h);
}

// The 16-bit element `index` (0 = low half) of a fragment register.
float Element(const uint32_t* regs, int index, MmaInput input) {
  return HalfToFloat(static_cast<uint16_t>(regs[index / 2] >> (16 * (index % 2))), input);
}

// mma.m16n8k16 on the gathered fragments of a warp (PTX ISA, "Matrix
// Fragments for mma.m16n8k16 with floating point type"): with g = lane / 4
// and t = lane % 4, lane holds
//   A (16 x 16, row): a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] =
//     A[g][2t+8..], a[3] = A[g+8][2t+8..];
//   B (16 x 8, col): b[0] = B[2t..2t+1][g], b[1] = B[2t+8..2t+9][g];
//   C, D (16 x 8): c[0..1] = C[g][2t..2t+1], c[2..3] = C[g+8][2t..2t+1].
void RunMma(const std::vector<const MmaFragments*>& lanes) {
  const MmaInput input = lanes[0]->input;
  for (const MmaFragments* f : lanes)
    if (f->input != input)
      throw EmulatorError("CUDA emulator: mma.sync with lanes of different input types");
  float A[16][16], B[16][8];
  for (int lane = 0; lane < kWarpSize; ++lane) {
    const int g = lane / 4, t = lane % 4;
    const uint32_t* a = lanes[lane]->a;
    const uint32_t* b = lanes[lane]->b;
    for (int half = 0; half < 2; ++half) {
      A[g][2 * t + half] = Element(a, 0 + half, input);
      A[g + 8][2 * t + half] = Element(a, 2 + half, input);
      A[g][2 * t + 8 + half] = Element(a, 4 + half, input);
      A[g + 8][2 * t + 8 + half] = Element(a, 6 + half, input);
      B[2 * t + half][g] = Element(b, 0 + half, input);
      B[2 * t + 8 + half][g] = Element(b, 2 + half, input);
    }
  }
  for (int lane = 0; lane < kWarpSize; ++lane) {
    const int g = lane / 4, t = lane % 4;
    float* c = lanes[lane]->c;
    for (int i = 0; i < 4; ++i) {
      const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
      float sum = 0.0f;  // each product of two 16-bit values is exact in fp32
      for (int k = 0; k < 16; ++k) sum += A[row][k] * B[k][col];
      c[i] += sum;
    }
  }
}

}  // namespace

struct BlockRunner::StackPool {
  ctx::pooled_fixedsize_stack allocator{kFiberStackBytes};
};

struct BlockRunner::Lane {
  enum class State { kReady, kBarrier, kWarp, kDone };
  ThreadCoordinates coords;
  int64_t run_ns = 0;  // time spent running (when timing)
  unsigned linear = 0;  // threadIdx linearised, x fastest: warp = linear / 32
  State state = State::kReady;
  ctx::fiber fiber;  // the thread, while it is suspended
  ctx::fiber sink;   // the scheduler, while the thread runs
  WarpOp op = WarpOp::kShfl;
  unsigned mask = 0;
  uint64_t bits = 0, result = 0;
  int operand = 0;
};

BlockRunner::BlockRunner() : stacks_(std::make_unique<StackPool>()) {}
BlockRunner::~BlockRunner() = default;

BlockRunner* BlockRunner::Active() { return active_runner; }

const ThreadCoordinates& BlockRunner::current() const { return running_->coords; }

void BlockRunner::Run(const char* kernel, dim3 grid, dim3 block, uint3 block_idx, size_t dynamic_shared,
                      const std::function<void()>& thread) {
  kernel_ = kernel;
  block_idx_ = block_idx;
  grid_ = grid;
  if (global_races_ != nullptr && race_check_)
    global_races_->StartBlock(block_idx.x + grid.x * (block_idx.y + grid.y * block_idx.z));
  global_bytes_ = 0;
  shared_.assign(dynamic_shared, 0xFF);  // NaN in every float lane: unwritten reads show
  const unsigned n = block.x * block.y * block.z;
  race_.clear();
  if (race_check_) {
    if (!static_shared_searched_) {  // once per runner (per host thread), found or not
      static_shared_searched_ = true;
      StaticShared found = FindStaticShared();
      static_shared_ = found.begin;
      static_shared_bytes_ = found.bytes;
      static_symbols_ = std::move(found.symbols);
      for (const auto& symbol : static_symbols_)
        if (symbol.guard) races_.Ignore(symbol.offset, symbol.bytes);
    }
    races_.StartBlock(n, static_shared_bytes_ + dynamic_shared);
  }
  lanes_.clear();
  lanes_.reserve(n);
  for (unsigned i = 0; i < n; ++i) {
    auto lane = std::make_unique<Lane>();
    lane->linear = i;
    lane->coords.thread_idx = {i % block.x, (i / block.x) % block.y, i / (block.x * block.y)};
    lane->coords.block_idx = block_idx;
    lane->coords.block_dim = block;
    lane->coords.grid_dim = grid;
    Lane* l = lane.get();
    lane->fiber = ctx::fiber(std::allocator_arg, stacks_->allocator, [l, &thread](ctx::fiber&& sink) {
      l->sink = std::move(sink);
      thread();
      l->state = Lane::State::kDone;
      return std::move(l->sink);
    });
    lanes_.push_back(std::move(lane));
  }
  BlockRunner* previous = active_runner;
  active_runner = this;
  try {
    Schedule();
  } catch (...) {
    active_runner = previous;
    lanes_.clear();  // unwinds the suspended threads' stacks
    throw;
  }
  active_runner = previous;
  thread_ns_.clear();
  if (timing_)
    for (const auto& lane : lanes_)
      thread_ns_.push_back(static_cast<int32_t>(std::min<int64_t>(lane->run_ns, INT32_MAX)));
  lanes_.clear();
}

void BlockRunner::Schedule() {
  order_.resize(lanes_.size());
  std::iota(order_.begin(), order_.end(), 0u);
  std::mt19937_64 rng(order_seed_ ^ std::hash<std::string_view>{}(kernel_) ^
                      (uint64_t{block_idx_.x} * 0x9E3779B97F4A7C15ull) ^ (uint64_t{block_idx_.y} << 40) ^
                      (uint64_t{block_idx_.z} << 52));
  for (;;) {
    bool alive = false;
    if (order_seed_ != 0) std::shuffle(order_.begin(), order_.end(), rng);
    for (unsigned i : order_) {
      Lane* lane = lanes_[i].get();
      if (lane->state != Lane::State::kReady) continue;
      running_ = lane;
      if (timing_) {
        const auto start = std::chrono::steady_clock::now();
        lane->fiber = std::move(lane->fiber).resume();
        lane->run_ns +=
            std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
      } else {
        lane->fiber = std::move(lane->fiber).resume();
      }
      running_ = nullptr;
      if (!race_.empty()) Fail(race_);
    }
    for (auto& lane : lanes_) alive = alive || lane->state != Lane::State::kDone;
    if (!alive) return;
    if (ReleaseWarps()) continue;
    // Every thread now waits or has returned: a warp operation left waiting
    // can never complete.
    for (unsigned w0 = 0; w0 < lanes_.size(); w0 += kWarpSize) {
      const unsigned w1 = std::min(static_cast<unsigned>(lanes_.size()), w0 + kWarpSize);
      for (unsigned i = w0; i < w1; ++i)
        if (lanes_[i]->state == Lane::State::kWarp) FailWarp(w0, w1);
    }
    if (ReleaseBarrier()) continue;
    Fail("no thread can make progress (internal emulator error)");
  }
}

// A warp operation completes when every lane of its mask waits at it with
// that mask; the lanes of a warp may form several such groups at once
// (partial masks). A lane of the mask that returned or waits at
// __syncthreads, or waits at another operation or with another mask, is a
// bug: FailWarp names it once nothing else can make progress.
bool BlockRunner::ReleaseWarps() {
  bool released = false;
  const unsigned n = static_cast<unsigned>(lanes_.size());
  for (unsigned w0 = 0; w0 < n; w0 += kWarpSize) {
    const unsigned w1 = std::min(n, w0 + kWarpSize);
    for (unsigned i = w0; i < w1; ++i) {
      const Lane& lead = *lanes_[i];
      if (lead.state != Lane::State::kWarp) continue;
      const unsigned mask = lead.mask;
      bool complete = mask != 0 && (w1 - w0 == static_cast<unsigned>(kWarpSize) || (mask >> (w1 - w0)) == 0);
      for (unsigned l = 0; complete && l < w1 - w0; ++l) {
        if (!(mask >> l & 1u)) continue;
        const Lane& lane = *lanes_[w0 + l];
        complete = lane.state == Lane::State::kWarp && lane.mask == mask && lane.op == lead.op;
      }
      if (!complete) continue;
      uint64_t ballot = 0;
      for (unsigned l = 0; l < w1 - w0; ++l)
        if (mask >> l & 1u) ballot |= static_cast<uint64_t>(lanes_[w0 + l]->bits != 0) << l;
      for (unsigned l = 0; l < w1 - w0; ++l) {
        if (!(mask >> l & 1u)) continue;
        Lane& lane = *lanes_[w0 + l];
        unsigned source = l;
        switch (lane.op) {
          case WarpOp::kShflXor: source = l ^ static_cast<unsigned>(lane.operand); break;
          case WarpOp::kShflDown: source = l + static_cast<unsigned>(lane.operand); break;
          case WarpOp::kShfl: source = static_cast<unsigned>(lane.operand) % kWarpSize; break;
          case WarpOp::kBallot:
          case WarpOp::kSyncWarp:
          case WarpOp::kMma: break;
        }
        // Out of the warp, or a lane outside the mask: its own value (CUDA
        // leaves a read from an inactive lane undefined).
        if (source >= w1 - w0 || !(mask >> source & 1u)) source = l;
        lane.result = lane.op == WarpOp::kBallot ? ballot : lanes_[w0 + source]->bits;
      }
      if (lead.op == WarpOp::kMma) {
        if (mask != 0xffffffffu || w1 - w0 != static_cast<unsigned>(kWarpSize))
          Fail("warp " + std::to_string(w0 / kWarpSize) + ": mma.sync needs all 32 lanes of a warp");
        std::vector<const MmaFragments*> fragments;
        for (unsigned l = 0; l < w1 - w0; ++l)
          fragments.push_back(reinterpret_cast<const MmaFragments*>(lanes_[w0 + l]->bits));
        RunMma(fragments);
      }
      if (lead.op == WarpOp::kSyncWarp && race_check_) races_.WarpSync(w0, mask);
      for (unsigned l = 0; l < w1 - w0; ++l)
        if (mask >> l & 1u) lanes_[w0 + l]->state = Lane::State::kReady;
      released = true;
    }
  }
  return released;
}

void BlockRunner::FailWarp(unsigned w0, unsigned w1) const {
  unsigned first = w0;
  while (lanes_[first]->state != Lane::State::kWarp) ++first;
  const Lane& lead = *lanes_[first];
  std::vector<unsigned> waiting, exited, at_barrier, elsewhere;
  for (unsigned i = w0; i < w1; ++i) {
    const Lane& lane = *lanes_[i];
    if (!(lead.mask >> (i - w0) & 1u)) continue;
    switch (lane.state) {
      case Lane::State::kWarp:
        (lane.op == lead.op && lane.mask == lead.mask ? waiting : elsewhere).push_back(i);
        break;
      case Lane::State::kDone: exited.push_back(i); break;
      case Lane::State::kBarrier: at_barrier.push_back(i); break;
      case Lane::State::kReady: break;
    }
  }
  std::ostringstream why;
  why << "warp " << w0 / kWarpSize << ": threads " << Ranges(waiting) << " wait at " << OpName(lead.op);
  if (lead.mask != 0xffffffffu) why << " with mask 0x" << std::hex << lead.mask << std::dec;
  if ((w1 - w0) < static_cast<unsigned>(kWarpSize) && (lead.mask >> (w1 - w0)) != 0)
    why << ", but the block has only " << lanes_.size() << " threads, so lanes " << (w1 - w0)
        << "-31 do not exist";
  if (!exited.empty()) why << ", but threads " << Ranges(exited) << " have returned";
  if (!at_barrier.empty()) why << ", but threads " << Ranges(at_barrier) << " wait at __syncthreads";
  if (!elsewhere.empty())
    why << ", but threads " << Ranges(elsewhere) << " wait at another warp operation or with another mask"
        << " (divergent warp operations)";
  Fail(why.str() + " (every lane of the mask must reach it)");
}

bool BlockRunner::ReleaseBarrier() {
  size_t waiting = 0, exited = 0;
  for (auto& lane : lanes_) {
    waiting += lane->state == Lane::State::kBarrier;
    exited += lane->state == Lane::State::kDone;
  }
  if (waiting == 0) return false;
  if (exited > 0) {
    std::vector<unsigned> w, e;
    for (auto& lane : lanes_) {
      if (lane->state == Lane::State::kBarrier) w.push_back(lane->linear);
      if (lane->state == Lane::State::kDone) e.push_back(lane->linear);
    }
    Fail("threads " + Ranges(w) + " wait at __syncthreads, but threads " + Ranges(e) +
         " have returned (a barrier every thread must reach)");
  }
  for (auto& lane : lanes_) lane->state = Lane::State::kReady;
  if (race_check_) races_.Barrier();
  if (race_check_ && global_races_ != nullptr) global_races_->Barrier();
  return true;
}

void BlockRunner::Touch(const void* address, size_t bytes, bool write, const void* code) {
  if (running_ == nullptr || (!race_check_ && !count_bytes_)) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(address);
  const uintptr_t dynamic = reinterpret_cast<uintptr_t>(shared_.data());
  size_t offset;
  if (a - static_shared_ < static_shared_bytes_) {
    offset = a - static_shared_;
  } else if (a - dynamic < shared_.size()) {
    offset = static_shared_bytes_ + (a - dynamic);
  } else {  // not shared memory: device memory, or the thread's own
    const bool races = race_check_ && global_races_ != nullptr;
    if ((count_bytes_ || races) && InDeviceMemory(a)) {
      if (count_bytes_) global_bytes_ += bytes;
      if (races)
        if (auto race = global_races_->Touch(running_->linear, a, bytes, write); race && race_.empty())
          race_ = DescribeGlobalRace(*race, code);
    }
    return;
  }
  if (!race_check_) return;
  if (auto race = races_.Touch(running_->linear, offset, bytes, write); race && race_.empty())
    race_ = DescribeRace(*race, code);
}

namespace {
// "; the second access is at <module>+0x1a2b (<function>)", or nothing when
// the instruction's module is unknown.
std::string SecondAccess(const void* code) {
  std::ostringstream out;
  Dl_info info{};
  if (code != nullptr && dladdr(code, &info) != 0 && info.dli_fname != nullptr) {
    const char* file = std::strrchr(info.dli_fname, '/');
    out << "; the second access is at " << (file ? file + 1 : info.dli_fname) << "+0x" << std::hex
        << (reinterpret_cast<uintptr_t>(code) - reinterpret_cast<uintptr_t>(info.dli_fbase)) << std::dec;
    if (info.dli_sname != nullptr) {
      int status = 0;
      char* name = abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status);
      out << " (" << (status == 0 ? name : info.dli_sname) << ")";
      std::free(name);
    }
  }
  return out.str();
}
}  // namespace

void BlockRunner::SetGlobalRaceCheck(GlobalRaceDetector* detector) {
  global_races_ = detector;
  device_ranges_.clear();
  host_pages_.clear();
}

bool BlockRunner::InDeviceMemory(uintptr_t address) {
  for (const auto& [begin, end] : device_ranges_)
    if (address - begin < end - begin) return true;
  const uintptr_t page = address / 4096;
  if (std::find(host_pages_.begin(), host_pages_.end(), page) != host_pages_.end()) return false;
  const char* begin = nullptr;
  size_t bytes = 0;
  if (FindGuardedAllocation(reinterpret_cast<const void*>(address), &begin, &bytes)) {
    const auto b = reinterpret_cast<uintptr_t>(begin);
    // The most recently found first: a kernel touches a few buffers over and over.
    device_ranges_.insert(device_ranges_.begin(), {b, b + bytes});
    if (device_ranges_.size() > 16) device_ranges_.pop_back();
    return true;
  }
  host_pages_.push_back(page);  // a thread's stack, a kernel's arguments
  if (host_pages_.size() > 64) host_pages_.erase(host_pages_.begin());
  return false;
}

// "block (1,0,0) thread 3 writes byte 12 of a 1024-byte device allocation and
// block (0,0,0) thread 5 reads it in the same launch ...".
std::string BlockRunner::DescribeGlobalRace(const GlobalRaceDetector::Race& race, const void* code) const {
  auto block = [&](uint32_t linear) {
    return "(" + std::to_string(linear % grid_.x) + "," + std::to_string(linear / grid_.x % grid_.y) + "," +
           std::to_string(linear / (grid_.x * grid_.y)) + ")";
  };
  const auto verb = [](bool write) { return write ? "writes" : "reads"; };
  std::ostringstream out;
  out << "global-memory race: block " << block(race.earlier.block) << " thread " << race.earlier.thread << " "
      << verb(race.earlier.write) << " byte ";
  const char* begin = nullptr;
  size_t bytes = 0;
  if (FindGuardedAllocation(reinterpret_cast<const void*>(race.address), &begin, &bytes))
    out << race.address - reinterpret_cast<uintptr_t>(begin) << " of a " << bytes << "-byte device allocation";
  else
    out << "at 0x" << std::hex << race.address << std::dec;
  out << " and block " << block(race.later.block) << " thread " << race.later.thread << " "
      << verb(race.later.write) << " it in the same launch";
  if (race.earlier.block != race.later.block)
    out << " (blocks of a grid run in no order: one block's write is not another's to read or write)";
  else
    out << " with no __syncthreads between them";
  out << SecondAccess(code);
  return out.str();
}

// "thread 0 writes byte 4 of the dynamic shared memory (extern __shared__)
// and thread 37 reads it ..., at kernels_emulated_test+0x1a2b (Kernel(float*))".
std::string BlockRunner::DescribeRace(const SharedRaceDetector::Race& race, const void* code) const {
  std::ostringstream out;
  const auto verb = [](bool write) { return write ? "writes" : "reads"; };
  out << "shared-memory race: thread " << race.earlier.thread << " " << verb(race.earlier.write) << " byte ";
  if (race.offset < static_shared_bytes_) {
    auto it = std::upper_bound(static_symbols_.begin(), static_symbols_.end(), race.offset,
                               [](size_t offset, const auto& symbol) { return offset < symbol.offset; });
    if (it != static_symbols_.begin() && race.offset < std::prev(it)->offset + std::prev(it)->bytes)
      out << race.offset - std::prev(it)->offset << " of " << std::prev(it)->name;
    else
      out << race.offset << " of the thread-local block holding the static __shared__ arrays";
  } else {
    out << race.offset - static_shared_bytes_ << " of the dynamic shared memory (extern __shared__)";
  }
  out << " and thread " << race.later.thread << " " << verb(race.later.write)
      << " it with no __syncthreads between them";
  if (race.earlier.thread / kWarpSize == race.later.thread / kWarpSize)
    out << " and no __syncwarp both lanes took part in (lanes of a warp need not run in lockstep)";
  out << SecondAccess(code);
  return out.str();
}

void BlockRunner::SyncThreads() {
  Lane* lane = running_;
  lane->state = Lane::State::kBarrier;
  lane->sink = std::move(lane->sink).resume();
  running_ = lane;
}

uint64_t BlockRunner::WarpExchange(WarpOp op, unsigned mask, uint64_t bits, int operand) {
  Lane* lane = running_;
  lane->state = Lane::State::kWarp;
  lane->op = op;
  lane->mask = mask;
  lane->bits = bits;
  lane->operand = operand;
  lane->sink = std::move(lane->sink).resume();
  running_ = lane;
  return lane->result;
}

void BlockRunner::Fail(const std::string& what) const {
  std::ostringstream out;
  out << "CUDA emulator: kernel " << kernel_ << ", block (" << block_idx_.x << "," << block_idx_.y << ","
      << block_idx_.z << "): " << what;
  if (order_seed_ != 0) out << " [threads in the order of seed " << order_seed_ << "]";
  throw EmulatorError(out.str());
}

// --- the device API of device_api.h ---
const ThreadCoordinates& This() { return RunnerOrDie("threadIdx/blockIdx").current(); }
void SyncThreads() { RunnerOrDie("__syncthreads").SyncThreads(); }
uint64_t WarpExchange(WarpOp op, unsigned mask, uint64_t bits, int operand) {
  return RunnerOrDie(OpName(op)).WarpExchange(op, mask, bits, operand);
}
void* DynamicSharedMemory() { return RunnerOrDie("extern __shared__").dynamic_shared(); }
void WarpMma(const MmaFragments& fragments) {
  RunnerOrDie("mma.sync").WarpExchange(WarpOp::kMma, 0xffffffffu, reinterpret_cast<uint64_t>(&fragments), 0);
}

}  // namespace hetermoe::emulator
