// The hooks behind the shared-memory race check. The emulated kernels are
// compiled with g++'s -fsanitize=thread instrumentation (the calls before
// every load and store, not the ThreadSanitizer runtime, which is not
// linked): race_hooks.cc defines the __tsan_* functions those calls land in
// and hands each access to the running block (BlockRunner::Touch), the way
// the Linux kernel's KCSAN builds its own checker on the same
// instrumentation. Outside a kernel an access costs one check.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace hetermoe::emulator {

// Where the emulated kernels' static __shared__ arrays live: device_api.h
// makes them `static thread_local`, so in the calling host thread's block of
// this module's thread-local storage.
struct StaticShared {
  uintptr_t begin = 0;  // 0 when the block cannot be found
  size_t bytes = 0;
  struct Symbol {
    size_t offset = 0, bytes = 0;
    std::string name;  // demangled
    bool guard = false;  // the emulator's own: the C++ guard of a thread_local's construction
  };
  // From the module's symbol table (empty if it was stripped), by offset.
  std::vector<Symbol> symbols;
};
StaticShared FindStaticShared();

}  // namespace hetermoe::emulator
