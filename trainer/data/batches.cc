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

std::string Names(const std::vector<io::TokenFile>& files) {
  std::string out;
  for (const auto& f : files) out += (out.empty() ? "" : ", ") + f.path();
  return out;
}

// Copies one sequence's T + 1 tokens as T inputs and T targets.
void Split(const uint32_t* tokens, int64_t seq_len, int32_t* inputs, int32_t* targets) {
  for (int64_t t = 0; t < seq_len; ++t) {
    inputs[t] = static_cast<int32_t>(tokens[t]);
    targets[t] = static_cast<int32_t>(tokens[t + 1]);
  }
}

bool Wanted(const std::vector<bool>& wanted, int64_t i) {
  return wanted.empty() || wanted[static_cast<size_t>(i)];
}

class SourceBase : public BatchSource {
 public:
  SourceBase(std::vector<io::TokenFile> files, int64_t batch, int64_t seq_len)
      : files_(std::move(files)), batch_(batch), seq_len_(seq_len) {
    if (files_.empty()) throw Error("data.train: no token files");
    if (batch_ <= 0 || seq_len_ <= 0)
      throw Error(Names(files_) + ": batch " + std::to_string(batch_) + " and sequence length " +
                  std::to_string(seq_len_) + " must be positive");
  }
  uint64_t bytes_read() const override {
    uint64_t total = 0;
    for (const auto& f : files_) total += f.bytes_read();
    return total;
  }

 protected:
  std::vector<io::TokenFile> files_;
  int64_t batch_, seq_len_;
  // One sequence's T + 1 tokens (sized at the first read: the subclass has
  // checked T against the data by then).
  uint32_t* Scratch() {
    scratch_.resize(static_cast<size_t>(seq_len_) + 1);
    return scratch_.data();
  }

 private:
  std::vector<uint32_t> scratch_;
};

// The files back to back, read as llm.c reads one.
class InOrder final : public SourceBase {
 public:
  InOrder(std::vector<io::TokenFile> files, int64_t batch, int64_t seq_len)
      : SourceBase(std::move(files), batch, seq_len) {
    for (const auto& f : files_) {
      first_.push_back(total_);
      total_ += f.size();
    }
    int64_t span;
    if (__builtin_mul_overflow(batch_, seq_len_, &span) || span >= total_)
      throw Error(Names(files_) + ": " + std::to_string(total_) + " tokens are fewer than one batch of " +
                  std::to_string(batch_) + " x " + std::to_string(seq_len_) + " + 1");
  }
  void Next(int32_t* inputs, int32_t* targets, const std::vector<bool>& wanted) override {
    // Invariant: position_ + G*T + 1 <= total_, kept by the constructor,
    // set_position and the wrap below.
    for (int64_t i = 0; i < batch_; ++i) {
      if (!Wanted(wanted, i)) continue;
      uint32_t* tokens = Scratch();
      ReadTokens(position_ + i * seq_len_, seq_len_ + 1, tokens);
      Split(tokens, seq_len_, inputs + i * seq_len_, targets + i * seq_len_);
    }
    const int64_t span = batch_ * seq_len_;
    position_ += span;
    if (position_ + span + 1 > total_) position_ = 0;
  }
  DataPosition position() const override { return {0, position_}; }
  void set_position(const DataPosition& p) override {
    if (p.epoch != 0)
      throw Error("data position: epoch " + std::to_string(p.epoch) + " of in-order data (a shuffled run's checkpoint?)");
    const int64_t last = total_ - batch_ * seq_len_ - 1;
    if (p.position < 0 || p.position > last)
      throw Error(Names(files_) + ": position " + std::to_string(p.position) + " is outside [0, " +
                  std::to_string(last) + "], the start of the last whole batch");
    position_ = p.position;
  }

 private:
  // Tokens [first, first + count) of the files back to back.
  void ReadTokens(int64_t first, int64_t count, uint32_t* out) const {
    size_t k = std::upper_bound(first_.begin(), first_.end(), first) - first_.begin() - 1;
    while (count > 0) {
      const int64_t offset = first - first_[k], n = std::min(count, files_[k].size() - offset);
      files_[k].Read(offset, n, out);
      first += n, count -= n, out += n, ++k;
    }
  }

  std::vector<int64_t> first_;  // per file: the position of its first token
  int64_t total_ = 0, position_ = 0;
};

class Shuffled final : public SourceBase {
 public:
  Shuffled(std::vector<io::TokenFile> files, int64_t batch, int64_t seq_len, uint64_t seed)
      : SourceBase(std::move(files), batch, seq_len), seed_(seed) {
    for (const auto& f : files_) {
      if (f.size() < seq_len_ + 1)
        throw Error(f.path() + ": " + std::to_string(f.size()) + " tokens, fewer than one sequence of " +
                    std::to_string(seq_len_) + " + 1 (data.shuffle reads whole sequences inside each file)");
      first_.push_back(total_);
      total_ += (f.size() - 1) / seq_len_;
    }
    if (total_ < batch_)
      throw Error(Names(files_) + ": " + std::to_string(total_) + " sequences of " + std::to_string(seq_len_) +
                  " (+1) tokens, fewer than one global batch of " + std::to_string(batch_));
    order_ = EpochOrder(total_, seed_, epoch_);
  }

  void Next(int32_t* inputs, int32_t* targets, const std::vector<bool>& wanted) override {
    if (position_ + batch_ > total_) StartEpoch(epoch_ + 1);
    for (int64_t i = 0; i < batch_; ++i) {
      if (!Wanted(wanted, i)) continue;
      const int64_t s = order_[position_ + i];
      const size_t k = std::upper_bound(first_.begin(), first_.end(), s) - first_.begin() - 1;
      uint32_t* tokens = Scratch();
      files_[k].Read((s - first_[k]) * seq_len_, seq_len_ + 1, tokens);
      Split(tokens, seq_len_, inputs + i * seq_len_, targets + i * seq_len_);
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

  std::vector<int64_t> first_;  // per file: the global index of its first sequence
  int64_t total_ = 0;
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

std::unique_ptr<BatchSource> MakeBatches(std::vector<io::TokenFile> shards, int64_t global_batch,
                                         int64_t seq_len, bool shuffle, uint64_t seed) {
  if (shuffle) return std::make_unique<Shuffled>(std::move(shards), global_batch, seq_len, seed);
  return std::make_unique<InOrder>(std::move(shards), global_batch, seq_len);
}

}  // namespace hetermoe::data
