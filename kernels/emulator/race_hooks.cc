#include "kernels/emulator/race_hooks.h"

#include <cxxabi.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "kernels/emulator/block_runner.h"

namespace hetermoe::emulator {
namespace {

// The thread-local symbols (STT_TLS: value = offset in the TLS segment) of
// the ELF file at `path`, from its .symtab.
std::vector<StaticShared::Symbol> ThreadLocalSymbols(const std::string& path) {
  std::vector<StaticShared::Symbol> symbols;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return symbols;
  struct stat st {};
  void* map = fstat(fd, &st) == 0 ? mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0) : MAP_FAILED;
  close(fd);
  if (map == MAP_FAILED) return symbols;
  const auto* file = static_cast<const unsigned char*>(map);
  const size_t size = st.st_size;
  const auto* eh = reinterpret_cast<const ElfW(Ehdr)*>(file);
  const bool elf = size >= sizeof(ElfW(Ehdr)) && std::memcmp(eh->e_ident, ELFMAG, SELFMAG) == 0 &&
                   eh->e_shoff + size_t{eh->e_shnum} * sizeof(ElfW(Shdr)) <= size;
  for (int i = 0; elf && i < eh->e_shnum; ++i) {
    const auto* sh = reinterpret_cast<const ElfW(Shdr)*>(file + eh->e_shoff) + i;
    if (sh->sh_type != SHT_SYMTAB || sh->sh_link >= eh->e_shnum || sh->sh_offset + sh->sh_size > size) continue;
    const auto* strtab = reinterpret_cast<const ElfW(Shdr)*>(file + eh->e_shoff) + sh->sh_link;
    if (strtab->sh_offset + strtab->sh_size > size) continue;
    const auto* syms = reinterpret_cast<const ElfW(Sym)*>(file + sh->sh_offset);
    for (size_t k = 0; k < sh->sh_size / sizeof(ElfW(Sym)); ++k) {
      if (ELF64_ST_TYPE(syms[k].st_info) != STT_TLS || syms[k].st_name >= strtab->sh_size) continue;
      const char* mangled = reinterpret_cast<const char*>(file + strtab->sh_offset + syms[k].st_name);
      int status = 0;
      char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
      symbols.push_back({syms[k].st_value, syms[k].st_size, status == 0 ? demangled : mangled,
                         std::strncmp(mangled, "_ZGV", 4) == 0});
      std::free(demangled);
    }
  }
  munmap(map, size);
  std::sort(symbols.begin(), symbols.end(), [](const auto& a, const auto& b) { return a.offset < b.offset; });
  return symbols;
}

}  // namespace

StaticShared FindStaticShared() {
  struct Search {
    uintptr_t code;
    StaticShared found;
    std::string path;
  } search{reinterpret_cast<uintptr_t>(&FindStaticShared), {}, {}};
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        auto* s = static_cast<Search*>(data);
        bool here = false;
        size_t tls_bytes = 0;
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          const uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
          if (ph.p_type == PT_LOAD && s->code >= begin && s->code < begin + ph.p_memsz) here = true;
          if (ph.p_type == PT_TLS) tls_bytes = ph.p_memsz;
        }
        if (!here) return 0;
        if (info->dlpi_tls_data != nullptr) {
          s->found.begin = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
          s->found.bytes = tls_bytes;
        }
        s->path = info->dlpi_name != nullptr && *info->dlpi_name ? info->dlpi_name : "/proc/self/exe";
        return 1;
      },
      &search);
  if (search.found.begin != 0) search.found.symbols = ThreadLocalSymbols(search.path);
  return search.found;
}

}  // namespace hetermoe::emulator

namespace {

// Inlined into each hook, so the return address is the kernel's code.
#define HM_TOUCH(address, bytes, write)                                                                  \
  do {                                                                                                   \
    if (auto* runner = ::hetermoe::emulator::BlockRunner::Active())                                      \
      runner->Touch(address, bytes, write, __builtin_return_address(0));                                 \
  } while (0)

}  // namespace

// Hidden: a library and the program that loads it each check their own
// kernels with their own runner.
#define HM_HOOK extern "C" __attribute__((visibility("hidden")))

HM_HOOK void __tsan_init() {}
HM_HOOK void __tsan_func_entry(void*) {}
HM_HOOK void __tsan_func_exit() {}
HM_HOOK void __tsan_vptr_update(void**, void*) {}
HM_HOOK void __tsan_vptr_read(void**) {}
HM_HOOK void __tsan_read_range(void* p, size_t n) { HM_TOUCH(p, n, false); }
HM_HOOK void __tsan_write_range(void* p, size_t n) { HM_TOUCH(p, n, true); }

#define HM_ACCESS_HOOKS(N)                                                               \
  HM_HOOK void __tsan_read##N(void* p) { HM_TOUCH(p, N, false); }                        \
  HM_HOOK void __tsan_write##N(void* p) { HM_TOUCH(p, N, true); }                        \
  HM_HOOK void __tsan_unaligned_read##N(void* p) { HM_TOUCH(p, N, false); }              \
  HM_HOOK void __tsan_unaligned_write##N(void* p) { HM_TOUCH(p, N, true); }              \
  HM_HOOK void __tsan_volatile_read##N(void* p) { HM_TOUCH(p, N, false); }               \
  HM_HOOK void __tsan_volatile_write##N(void* p) { HM_TOUCH(p, N, true); }               \
  HM_HOOK void __tsan_unaligned_volatile_read##N(void* p) { HM_TOUCH(p, N, false); }     \
  HM_HOOK void __tsan_unaligned_volatile_write##N(void* p) { HM_TOUCH(p, N, true); }
HM_ACCESS_HOOKS(1)
HM_ACCESS_HOOKS(2)
HM_ACCESS_HOOKS(4)
HM_ACCESS_HOOKS(8)
HM_ACCESS_HOOKS(16)

// Atomics in instrumented host code (test fixtures' std::atomic): done as
// sequentially consistent atomics, never reported (CUDA kernels here use
// none; an atomic on shared memory would need the detector to know it).
#define HM_ATOMIC_RMW(N, T, op) \
  HM_HOOK T __tsan_atomic##N##_##op(volatile T* a, T v, int) { return __atomic_##op(a, v, __ATOMIC_SEQ_CST); }
#define HM_ATOMIC_HOOKS(N, T)                                                                                  \
  HM_HOOK T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); }  \
  HM_HOOK void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); }  \
  HM_HOOK T __tsan_atomic##N##_exchange(volatile T* a, T v, int) { return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST); } \
  HM_ATOMIC_RMW(N, T, fetch_add)                                                                               \
  HM_ATOMIC_RMW(N, T, fetch_sub)                                                                               \
  HM_ATOMIC_RMW(N, T, fetch_and)                                                                               \
  HM_ATOMIC_RMW(N, T, fetch_or)                                                                                \
  HM_ATOMIC_RMW(N, T, fetch_xor)                                                                               \
  HM_ATOMIC_RMW(N, T, fetch_nand)                                                                              \
  HM_HOOK int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {                 \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                    \
  }                                                                                                            \
  HM_HOOK int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {                   \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                     \
  }                                                                                                            \
  HM_HOOK T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                       \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                          \
    return c;                                                                                                  \
  }
HM_ATOMIC_HOOKS(8, char)
HM_ATOMIC_HOOKS(16, short)
HM_ATOMIC_HOOKS(32, int)
HM_ATOMIC_HOOKS(64, long)
HM_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
HM_HOOK void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
