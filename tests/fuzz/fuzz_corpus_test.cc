// fuzz_corpus_test: the fuzz targets under gtest, built with any compiler.
//
// Replays the seed corpus (corpus/safetensors, corpus/config) and a fixed
// set of pseudo-random mutations of it through the same target functions
// libFuzzer runs, so every `ctest` exercises the parsers' error paths even
// where clang and libFuzzer are absent. The mutations come from std::mt19937
// with a fixed seed, whose output the standard specifies, so a failure
// reproduces everywhere; it is reported with the seed file and case number.
#include <algorithm>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "tests/fuzz/fuzz_targets.h"

namespace hetermoe::fuzz {
namespace {

struct Seed {
  std::string name;
  std::string bytes;
};

std::vector<Seed> LoadSeeds(const std::string& subdir) {
  std::vector<Seed> seeds;
  const std::filesystem::path dir = std::filesystem::path(HETERMOE_FUZZ_CORPUS_DIR) / subdir;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    seeds.push_back({entry.path().filename().string(), std::string(std::istreambuf_iterator<char>(in), {})});
  }
  // directory_iterator's order is unspecified; sort so the mutations are too.
  std::sort(seeds.begin(), seeds.end(), [](const Seed& a, const Seed& b) { return a.name < b.name; });
  return seeds;
}

// Byte strings a parser's checks care about: JSON structure, number edges,
// the 8-byte header size.
using std::string_view_literals::operator""sv;
const std::string_view kTokens[] = {
    "{", "}", "[", "]", ",", ":", "\"", "\\", "null", "true", "-", "0", "-1", "1e400", "0.5",
    "18446744073709551615", "18446744073709551616", "9223372036854775807", "9223372036854775808",
    "4294967296", "\"F16\"", "\"BF16\"", "\"F64\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"",
    "\"__metadata__\"", "\"head_dim\"", "\"num_key_value_heads\"", "\"tie_word_embeddings\"", "\\u0000",
    "\xff", "\0"sv};

class Mutator {
 public:
  explicit Mutator(uint32_t seed) : rng_(seed) {}

  uint32_t Below(uint32_t n) { return n == 0 ? 0 : rng_() % n; }

  std::string Mutate(std::string s) {
    const int rounds = 1 + Below(4);
    for (int r = 0; r < rounds; ++r) {
      const size_t pos = Below(static_cast<uint32_t>(s.size() + 1));
      switch (Below(8)) {
        case 0:  // flip one bit
          if (!s.empty()) s[pos % s.size()] ^= static_cast<char>(1u << Below(8));
          break;
        case 1:  // overwrite a byte
          if (!s.empty()) s[pos % s.size()] = static_cast<char>(Below(256));
          break;
        case 2:  // delete a short run
          s.erase(pos, 1 + Below(16));
          break;
        case 3:  // duplicate a short run
          s.insert(pos, s.substr(pos, 1 + Below(16)));
          break;
        case 4:  // truncate
          s.resize(pos);
          break;
        case 5:  // insert a token
          s.insert(pos, kTokens[Below(std::size(kTokens))]);
          break;
        case 6: {  // replace the digit run at or after pos by a token
          size_t b = s.find_first_of("0123456789", pos);
          if (b == std::string::npos) break;
          size_t e = s.find_first_not_of("0123456789", b);
          s.replace(b, (e == std::string::npos ? s.size() : e) - b, kTokens[Below(std::size(kTokens))]);
          break;
        }
        case 7:  // overwrite the first 8 bytes (a safetensors header size)
          if (s.size() >= 8) {
            const uint64_t sizes[] = {0, 1, s.size() - 8, s.size() - 7, s.size(), ~uint64_t{0},
                                      uint64_t{1} << 63, rng_()};
            uint64_t v = sizes[Below(std::size(sizes))];
            for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
          }
          break;
      }
    }
    return s;
  }

 private:
  std::mt19937 rng_;
};

// Runs `target` on the seeds and `mutations` mutants; anything escaping it
// (it swallows hetermoe::Error only) fails the test.
void Replay(const std::string& subdir, void (*target)(const uint8_t*, size_t), int mutations) {
  const std::vector<Seed> seeds = LoadSeeds(subdir);
  ASSERT_FALSE(seeds.empty()) << "no seeds in corpus/" << subdir;
  auto run = [&](const std::string& bytes, const std::string& what) {
    try {
      target(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": escaped exception: " << e.what();
    } catch (...) {
      ADD_FAILURE() << what << ": escaped a non-std exception";
    }
  };
  for (const Seed& seed : seeds) run(seed.bytes, "seed " + seed.name);
  Mutator mutator(20240520);
  for (int i = 0; i < mutations; ++i) {
    const Seed& seed = seeds[mutator.Below(static_cast<uint32_t>(seeds.size()))];
    run(mutator.Mutate(seed.bytes), "mutation " + std::to_string(i) + " of seed " + seed.name);
  }
}

// JSON nested far deeper than any fuzzer input of default length reaches:
// a recursive parse, copy, dump or destructor would overflow the stack.
TEST(FuzzCorpusTest, DeeplyNestedJson) {
  constexpr int kDepth = 200000;
  const std::string nested = "{\"hidden_size\":" + std::string(kDepth, '[') + std::string(kDepth, ']') + "}";
  const std::string unclosed = "{\"a\":" + std::string(kDepth, '{');
  for (const std::string& json : {nested, unclosed}) {
    EXPECT_NO_THROW(FuzzMixtralConfig(reinterpret_cast<const uint8_t*>(json.data()), json.size()));
    std::string file(8, '\0');
    for (int i = 0; i < 8; ++i) file[i] = static_cast<char>(uint64_t{json.size()} >> (8 * i));
    file += json;
    EXPECT_NO_THROW(FuzzSafetensors(reinterpret_cast<const uint8_t*>(file.data()), file.size()));
  }
}

TEST(FuzzCorpusTest, Safetensors) { Replay("safetensors", FuzzSafetensors, 4000); }

TEST(FuzzCorpusTest, MixtralConfig) { Replay("config", FuzzMixtralConfig, 4000); }

}  // namespace
}  // namespace hetermoe::fuzz
