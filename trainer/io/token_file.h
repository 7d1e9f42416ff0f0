// Token files and the batch reader of docs/model.md ("Token data").
//
// A token file is a flat little-endian array of uint16 token ids (uint32 when
// the llm.c header says so or the vocabulary exceeds 65535), optionally
// behind llm.c's 256 x int32 header (magic 20240520, version 1 = uint16,
// 2 = uint32, header[2] = number of tokens).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace hetermoe::io {

// Loads every token and checks each id < vocab_size (error names the file,
// the offending position and id).
std::vector<uint32_t> LoadTokenFile(const std::string& path, int64_t vocab_size);

// Writes tokens with the llm.c header (uint16 when every id fits, else uint32).
void WriteTokenFile(const std::string& path, const std::vector<uint32_t>& tokens);

// Reads global batches as llm.c does: a batch of B sequences of length T takes
// B*T+1 tokens from the position; sequence i has inputs [p+i*T, p+i*T+T) and
// targets shifted by one; the position advances by B*T and returns to 0 when
// fewer than B*T+1 tokens remain. Pure: no I/O.
class BatchReader {
 public:
  // Throws if the tokens are fewer than one batch (B*T+1); `source` names them.
  BatchReader(const std::vector<uint32_t>* tokens, int64_t batch, int64_t seq_len,
              const std::string& source);
  // Fills inputs[B*T] and targets[B*T] and advances.
  void Next(int32_t* inputs, int32_t* targets);
  int64_t position() const { return position_; }
  void set_position(int64_t position);  // for resume; throws if out of range

 private:
  const std::vector<uint32_t>* tokens_;
  int64_t batch_, seq_len_, position_ = 0;
  std::string source_;
};

}  // namespace hetermoe::io
