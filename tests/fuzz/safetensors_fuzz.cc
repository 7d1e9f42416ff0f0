// Fuzz target: SafetensorsFile::Parse on arbitrary bytes, then reading every
// tensor it accepted (so ASan sees any offset the checks let through).

/* Build and run (clang, from the repository root; see CMakeLists.txt here):
  cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
        -DHETERMOE_BUILD_FUZZERS=ON -DHETERMOE_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
  ninja -C build-fuzz safetensors_fuzz
  mkdir -p /tmp/st-corpus && build-fuzz/tests/fuzz/safetensors_fuzz \
      -dict=tests/fuzz/safetensors.dict -max_total_time=60 \
      /tmp/st-corpus tests/fuzz/corpus/safetensors
(libFuzzer adds new inputs to the first directory; the seeds stay as they are.)
*/
#include <cstdlib>
#include <string>

#include "common/error.h"
#include "tests/fuzz/fuzz_targets.h"
#include "trainer/io/safetensors.h"

namespace hetermoe::fuzz {

void FuzzSafetensors(const uint8_t* data, size_t size) {
  using io::SafetensorsFile;
  try {
    const SafetensorsFile file =
        SafetensorsFile::Parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    for (const io::TensorInfo& t : file.tensors()) {
      // Invariants Parse promises for every tensor it accepts.
      if (t.begin > t.end || t.end > size || file.Find(t.name) != &t || t.NumElements() < 0) std::abort();
      // Accepted offsets lie inside the input, so this is bounded by `size`.
      if (file.ReadFloat(t.name).size() != static_cast<size_t>(t.NumElements())) std::abort();
    }
  } catch (const hetermoe::Error&) {
    // Rejecting the input with a typed error is the expected outcome.
  }
}

}  // namespace hetermoe::fuzz

#ifdef HETERMOE_LIBFUZZER
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hetermoe::fuzz::FuzzSafetensors(data, size);
  return 0;
}
#endif
