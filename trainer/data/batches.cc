#include "trainer/data/batches.h"

#include <glob.h>

#include <algorithm>
#include <utility>

#include "common/error.h"
#include "trainer/io/token_file.h"

namespace hetermoe::data {
namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string Join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// The shards back to back, read by io::BatchReader (llm.c's order).
class InOrder final : public BatchSource {
 public:
  InOrder(std::vector<std::vector<uint32_t>> shards, const std::vector<std::string>& names, int64_t batch,
          int64_t seq_len) {
    // One file (the usual case) is moved, not copied.
    tokens_ = std::move(shards.front());
    for (size_t k = 1; k < shards.size(); ++k) {
      tokens_.insert(tokens_.end(), shards[k].begin(), shards[k].end());
      shards[k] = {};
    }
    reader_ = std::make_unique<io::BatchReader>(&tokens_, batch, seq_len, Join(names));
  }
  void Next(int32_t* inputs, int32_t* targets) override { reader_->Next(inputs, targets); }
  DataPosition position() const override { return {0, reader_->position()}; }
  void set_position(const DataPosition& p) override {
    if (p.epoch != 0) throw Error("data position: epoch " + std::to_string(p.epoch) + " of in-order data (a shuffled run's checkpoint?)");
    reader_->set_position(p.position);
  }

 private:
  std::vector<uint32_t> tokens_;
  std::unique_ptr<io::BatchReader> reader_;
};

class Shuffled final : public BatchSource {
 public:
  Shuffled(std::vector<std::vector<uint32_t>> shards, const std::vector<std::string>& names, int64_t batch,
           int64_t seq_len, uint64_t seed)
      : shards_(std::move(shards)), batch_(batch), seq_len_(seq_len), seed_(seed) {
    for (size_t k = 0; k < shards_.size(); ++k) {
      const int64_t n = static_cast<int64_t>(shards_[k].size());
      if (n < seq_len_ + 1)
        throw Error(names[k] + ": " + std::to_string(n) + " tokens, fewer than one sequence of " +
                    std::to_string(seq_len_) + " + 1 (data.shuffle reads whole sequences inside each file)");
      first_.push_back(total_);
      total_ += n > seq_len_ ? (n - 1) / seq_len_ : 0;
    }
    if (total_ < batch_)
      throw Error(Join(names) + ": " + std::to_string(total_) + " sequences of " + std::to_string(seq_len_) +
                  " (+1) tokens, fewer than one global batch of " + std::to_string(batch_));
    order_ = EpochOrder(total_, seed_, epoch_);
  }

  void Next(int32_t* inputs, int32_t* targets) override {
    if (position_ + batch_ > total_) StartEpoch(epoch_ + 1);
    for (int64_t i = 0; i < batch_; ++i) {
      const int64_t s = order_[position_ + i];
      const int64_t k = std::upper_bound(first_.begin(), first_.end(), s) - first_.begin() - 1;
      const uint32_t* from = shards_[k].data() + (s - first_[k]) * seq_len_;
      for (int64_t t = 0; t < seq_len_; ++t) {
        inputs[i * seq_len_ + t] = static_cast<int32_t>(from[t]);
        targets[i * seq_len_ + t] = static_cast<int32_t>(from[t + 1]);
      }
    }
    position_ += batch_;
  }
  DataPosition position() const override { return {epoch_, position_}; }
  void set_position(const DataPosition& p) override {
    if (p.epoch < 0 || p.position < 0 || p.position > total_)
      throw Error("data position: epoch " + std::to_string(p.epoch) + ", sequence " + std::to_string(p.position) +
                  " does not fit " + std::to_string(total_) + " sequences");
    StartEpoch(p.epoch);
    position_ = p.position;
  }

 private:
  void StartEpoch(int64_t epoch) {
    if (epoch != epoch_) order_ = EpochOrder(total_, seed_, epoch);
    epoch_ = epoch;
    position_ = 0;
  }

  std::vector<std::vector<uint32_t>> shards_;
  std::vector<int64_t> first_;  // per shard: the global index of its first sequence
  int64_t batch_, seq_len_, total_ = 0;
  uint64_t seed_;
  int64_t epoch_ = 0, position_ = 0;
  std::vector<int64_t> order_;
};

}  // namespace

std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  uint64_t state = seed ^ (0xD1B54A32D192ED03ull * static_cast<uint64_t>(epoch + 1));
  for (int64_t i = n - 1; i > 0; --i) {
    // Unbiased draw in [0, i] by rejection.
    const uint64_t range = static_cast<uint64_t>(i) + 1, limit = UINT64_MAX - UINT64_MAX % range;
    uint64_t r;
    do r = SplitMix64(state);
    while (r >= limit);
    std::swap(order[i], order[static_cast<int64_t>(r % range)]);
  }
  return order;
}

std::vector<std::string> ExpandShards(const std::vector<std::string>& patterns) {
  std::vector<std::string> files;
  for (const std::string& pattern : patterns) {
    if (pattern.find_first_of("*?[") == std::string::npos) {
      files.push_back(pattern);  // a plain path: opening it names it if it is missing
      continue;
    }
    glob_t g{};
    const int rc = ::glob(pattern.c_str(), 0, nullptr, &g);
    std::vector<std::string> matches(g.gl_pathv, g.gl_pathv + (rc == 0 ? g.gl_pathc : 0));
    ::globfree(&g);
    if (matches.empty()) throw Error(pattern + ": no token file matches");
    std::sort(matches.begin(), matches.end());
    files.insert(files.end(), matches.begin(), matches.end());
  }
  if (files.empty()) throw Error("data.train: no token files");
  return files;
}

std::unique_ptr<BatchSource> MakeBatches(std::vector<std::vector<uint32_t>> shards,
                                         const std::vector<std::string>& names, int64_t global_batch,
                                         int64_t seq_len, bool shuffle, uint64_t seed) {
  if (shuffle) return std::make_unique<Shuffled>(std::move(shards), names, global_batch, seq_len, seed);
  return std::make_unique<InOrder>(std::move(shards), names, global_batch, seq_len);
}

}  // namespace hetermoe::data
