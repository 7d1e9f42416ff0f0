#include "kernels/emulator/guarded_memory.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include "kernels/emulator/block_runner.h"

namespace hetermoe::emulator {
namespace {

size_t PageSize() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}
size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

struct Mapping {
  char* region;
  size_t span;
  size_t bytes;  // as requested
};

// Buffer start -> its mapping. The signal handler reads it without the lock
// (best effort, in a process about to abort).
std::mutex mappings_mutex;
std::map<const char*, Mapping>& Mappings() {
  static auto* m = new std::map<const char*, Mapping>;
  return *m;
}

// One line on stderr from the handler (no allocation; snprintf into a static
// buffer, then write).
void Report(const char* text) {
  const size_t n = std::strlen(text);
  (void)!write(STDERR_FILENO, text, n);
}

void OnSegv(int sig, siginfo_t* info, void*) {
  const char* addr = static_cast<const char*>(info->si_addr);
  const Mapping* hit = nullptr;
  const char* base = nullptr;
  for (const auto& [start, m] : Mappings()) {
    const char* guard = m.region + m.span - PageSize();
    if (addr >= guard && addr < guard + PageSize()) {
      hit = &m;
      base = start;
      break;
    }
  }
  if (hit == nullptr) {  // not ours: the default action (a crash with a core)
    signal(sig, SIG_DFL);
    return;
  }
  static char line[512];
  const BlockRunner* runner = BlockRunner::Active();
  if (runner != nullptr) {
    const uint3 b = runner->block_idx();
    std::snprintf(line, sizeof line,
                  "CUDA emulator: kernel %s, block (%u,%u,%u): out-of-bounds access at %p, %zu bytes past the end "
                  "of a %zu-byte device allocation at %p\n",
                  runner->kernel_name(), b.x, b.y, b.z, static_cast<const void*>(addr),
                  static_cast<size_t>(addr - (base + hit->bytes)), hit->bytes, static_cast<const void*>(base));
  } else {
    std::snprintf(line, sizeof line,
                  "CUDA emulator: out-of-bounds access at %p (outside any kernel), %zu bytes past the end of a "
                  "%zu-byte device allocation at %p\n",
                  static_cast<const void*>(addr), static_cast<size_t>(addr - (base + hit->bytes)), hit->bytes,
                  static_cast<const void*>(base));
  }
  Report(line);
  std::abort();
}

}  // namespace

void* GuardedAllocate(size_t bytes) {
  const size_t page = PageSize(), body = RoundUp(bytes == 0 ? 1 : bytes, 256);
  const size_t span = RoundUp(body, page) + page;
  void* region = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (region == MAP_FAILED) return nullptr;
  char* guard = static_cast<char*>(region) + span - page;
  if (mprotect(guard, page, PROT_NONE) != 0) {
    munmap(region, span);
    return nullptr;
  }
  char* mem = guard - body;
  std::memset(mem, 0xFF, body);  // device memory starts as garbage, not zeros
  std::lock_guard<std::mutex> lock(mappings_mutex);
  Mappings()[mem] = {static_cast<char*>(region), span, bytes};
  return mem;
}

void GuardedFree(void* p, size_t) {
  Mapping m{};
  {
    std::lock_guard<std::mutex> lock(mappings_mutex);
    auto it = Mappings().find(static_cast<const char*>(p));
    if (it == Mappings().end()) return;
    m = it->second;
    Mappings().erase(it);
  }
  munmap(m.region, m.span);
}

bool InGuardedAllocation(const void* p) {
  const char* begin;
  size_t bytes;
  return FindGuardedAllocation(p, &begin, &bytes);
}

bool FindGuardedAllocation(const void* p, const char** begin, size_t* bytes) {
  const char* c = static_cast<const char*>(p);
  std::lock_guard<std::mutex> lock(mappings_mutex);
  auto it = Mappings().upper_bound(c);
  if (it == Mappings().begin()) return false;
  --it;
  if (c >= it->first + it->second.bytes) return false;
  *begin = it->first;
  *bytes = it->second.bytes;
  return true;
}

void CatchOutOfBoundsOnThisThread() {
  static std::once_flag installed;
  std::call_once(installed, [] {
    struct sigaction action {};
    action.sa_sigaction = OnSegv;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, nullptr);
  });
  thread_local bool has_stack = false;
  if (has_stack) return;
  static constexpr size_t kStack = 64 * 1024;
  thread_local std::unique_ptr<char[]> stack(new char[kStack]);
  stack_t ss{};
  ss.ss_sp = stack.get();
  ss.ss_size = kStack;
  sigaltstack(&ss, nullptr);
  has_stack = true;
}

}  // namespace hetermoe::emulator
