// The fuzz targets' bodies, callable both from libFuzzer's entry point
// (safetensors_fuzz.cc, config_fuzz.cc built with HETERMOE_LIBFUZZER) and
// from fuzz_corpus_test, which replays seeds and fixed mutations under gtest.
//
// Contract under test: for any bytes, the parser either succeeds or throws
// hetermoe::Error. Each function swallows hetermoe::Error only; any other
// exception escapes, and a violated invariant aborts - both are bugs.
#pragma once

#include <cstddef>
#include <cstdint>

namespace hetermoe::fuzz {

void FuzzSafetensors(const uint8_t* data, size_t size);
void FuzzMixtralConfig(const uint8_t* data, size_t size);

}  // namespace hetermoe::fuzz
