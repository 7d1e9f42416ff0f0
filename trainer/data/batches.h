// Where a run's global batches come from (the run file's data.train, and
// data.valid): one or more token files (io::TokenFile, memory-mapped), read
// in order as llm.c does (the default) or, with data.shuffle, as sequences in
// a seeded shuffled order, epoch after epoch.
//
// In order: the files back to back are one stream of tokens; a global batch
// of G sequences of length T takes the G*T + 1 tokens from the position p
// (sequence i: inputs [p + i*T, p + i*T + T), targets one later), then p
// advances by G*T, returning to 0 when fewer than G*T + 1 tokens remain.
//
// Shuffled: shard k of n_k tokens holds (n_k - 1) / T sequences, sequence j
// being its tokens [j*T, j*T + T + 1) (inputs and the targets one later;
// neighbours share a boundary token, as llm.c's batches do, and no sequence
// crosses a shard). Epoch e visits all of them in EpochOrder(total, seed, e);
// a global batch is the next G of that order, and when fewer than G remain
// the epoch ends there and the next begins. The position (epoch, sequences
// read in it) is in every checkpoint, so a resumed run reads exactly what an
// uninterrupted one would.
//
// A process reads only the sequences it asks for (a distributed rank: its
// own micro-batches), so only their pages of the files come into memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/io/token_file.h"

namespace hetermoe::data {

// Pure: a permutation of [0, n) for (seed, epoch): Fisher-Yates over
// splitmix64, so the same on every machine and build.
std::vector<int64_t> EpochOrder(int64_t n, uint64_t seed, int64_t epoch);

// The token files `patterns` name (each a path or a glob), in the order
// given, a glob's matches sorted; a pattern matching nothing is an error
// naming it.
std::vector<std::string> ExpandShards(const std::vector<std::string>& patterns);

struct DataPosition {
  int64_t epoch = 0;     // shuffled: the epoch being read; in order: 0
  int64_t position = 0;  // shuffled: sequences read in the epoch; in order: the token position
};

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  // Advances to the next global batch and fills inputs[G*T] and
  // targets[G*T] with the sequences i for which wanted[i] (all when wanted
  // is empty); the rows of the others are left as they were.
  virtual void Next(int32_t* inputs, int32_t* targets, const std::vector<bool>& wanted) = 0;
  virtual DataPosition position() const = 0;
  // For resume; throws when the position does not fit the data.
  virtual void set_position(const DataPosition& position) = 0;
  // Bytes of token ids read from the files so far.
  virtual uint64_t bytes_read() const = 0;
};

// Throws, naming the files, when they hold less than one global batch (or,
// shuffled, a file holds less than one sequence).
std::unique_ptr<BatchSource> MakeBatches(std::vector<io::TokenFile> shards, int64_t global_batch,
                                         int64_t seq_len, bool shuffle, uint64_t seed);

}  // namespace hetermoe::data
