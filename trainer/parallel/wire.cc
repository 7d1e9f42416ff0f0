// The dispatch wire format (see wire.h).
#include "trainer/parallel/wire.h"

#include <algorithm>
#include <cstring>

#include "common/error.h"

namespace hetermoe::parallel::wire {

void MakeDedup(const std::vector<int64_t>& token_of_row, int64_t row0, int64_t rows, std::vector<int32_t>& scratch,
               Dedup* out) {
  out->index.resize(rows);
  out->first.clear();
  for (int64_t i = 0; i < rows; ++i) {
    int32_t& u = scratch[token_of_row[row0 + i]];
    if (u < 0) {
      u = static_cast<int32_t>(out->first.size());
      out->first.push_back(i);
    }
    out->index[i] = u;
  }
  for (int64_t first : out->first) scratch[token_of_row[row0 + first]] = -1;
}

size_t HeaderBytes(int64_t experts, int64_t rows, bool dedup) {
  size_t b = experts * sizeof(int64_t);
  if (dedup) b += sizeof(int64_t) + (rows * sizeof(int32_t) + 7) / 8 * 8;
  return b;
}

void PackDispatch(const int64_t* counts, int64_t experts, const float* data, int64_t rows, int64_t d,
                  const Dedup* dedup, std::vector<char>* box, size_t prefix) {
  const size_t header = HeaderBytes(experts, rows, dedup != nullptr);
  const size_t row_bytes = d * sizeof(float);
  box->resize(prefix + header + (dedup ? dedup->uniques() : rows) * row_bytes);
  char* out = box->data() + prefix;
  if (dedup == nullptr) {
    if (rows * row_bytes > 0) std::memcpy(out + header, data, rows * row_bytes);
  } else {
    const int64_t uniques = dedup->uniques();
    std::fill(out, out + header, 0);  // the index's padding
    std::memcpy(out + experts * sizeof(int64_t), &uniques, sizeof(int64_t));
    std::memcpy(out + (experts + 1) * sizeof(int64_t), dedup->index.data(), rows * sizeof(int32_t));
    if (row_bytes > 0)
      for (int64_t u = 0; u < uniques; ++u) std::memcpy(out + header + u * row_bytes, data + dedup->first[u] * d, row_bytes);
  }
  std::memcpy(out, counts, experts * sizeof(int64_t));
}

DispatchBlock UnpackDispatch(const char* box, size_t bytes, int64_t experts, int64_t max_rows, int64_t d, bool dedup) {
  DispatchBlock b;
  if (bytes < experts * sizeof(int64_t)) throw Error("corrupt dispatch header (block too short)");
  b.counts.resize(experts);
  std::memcpy(b.counts.data(), box, experts * sizeof(int64_t));
  for (int64_t c : b.counts) {
    if (c < 0 || c > max_rows || b.rows > max_rows - c) throw Error("corrupt dispatch header (row counts)");
    b.rows += c;
  }
  const size_t header = HeaderBytes(experts, b.rows, dedup);
  const size_t row_bytes = d * sizeof(float);
  if (!dedup) {
    if (bytes < header + b.rows * row_bytes) throw Error("corrupt dispatch header (rows missing)");
    b.data = reinterpret_cast<const float*>(box + header);
    return b;
  }
  if (bytes < header) throw Error("corrupt dedup index (block too short)");
  std::memcpy(&b.uniques, box + experts * sizeof(int64_t), sizeof(int64_t));
  if (b.uniques < 0 || b.uniques > b.rows || bytes < header + b.uniques * row_bytes)
    throw Error("corrupt dedup index (unique tokens)");
  b.index.resize(b.rows);
  std::memcpy(b.index.data(), box + (experts + 1) * sizeof(int64_t), b.rows * sizeof(int32_t));
  for (int32_t u : b.index)
    if (u < 0 || u >= b.uniques) throw Error("corrupt dedup index (row -> token)");
  b.data = reinterpret_cast<const float*>(box + header);
  return b;
}

void RowsByUnique(const std::vector<int32_t>& index, int64_t uniques, std::vector<int32_t>* start,
                  std::vector<int32_t>* rows) {
  start->assign(static_cast<size_t>(uniques) + 1, 0);
  for (int32_t u : index) ++(*start)[u + 1];
  for (int64_t u = 0; u < uniques; ++u) (*start)[u + 1] += (*start)[u];
  rows->resize(index.size());
  std::vector<int32_t> at(start->begin(), start->end() - 1);
  for (size_t i = 0; i < index.size(); ++i) (*rows)[at[index[i]]++] = static_cast<int32_t>(i);
}

void FanOut(const DispatchBlock& block, int64_t d, float* out) {
  for (int64_t i = 0; i < block.rows; ++i)
    std::memcpy(out + i * d, block.data + block.index[i] * d, d * sizeof(float));
}

void SumByUnique(const std::vector<int32_t>& index, int64_t uniques, const float* dx, int64_t d, float* sums) {
  std::fill(sums, sums + uniques * d, 0.0f);
  for (size_t i = 0; i < index.size(); ++i) {
    float* dst = sums + index[i] * d;
    const float* src = dx + i * d;
    for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
  }
}

void ScatterSums(const Dedup& dedup, const float* sums, int64_t d, float* out) {
  std::fill(out, out + dedup.index.size() * d, 0.0f);
  for (int64_t u = 0; u < dedup.uniques(); ++u)
    std::memcpy(out + dedup.first[u] * d, sums + u * d, d * sizeof(float));
}

void SplitNodeBlock(const DispatchBlock& node, int64_t d, const std::vector<int64_t>& experts_per_owner,
                    std::vector<NodeSplit>* out) {
  out->resize(experts_per_owner.size());
  std::vector<int32_t> owner_unique(static_cast<size_t>(node.uniques), -1);  // node token -> the owner's
  const size_t row_bytes = d * sizeof(float);
  int64_t expert = 0, row = 0;
  for (size_t i = 0; i < experts_per_owner.size(); ++i) {
    NodeSplit& s = (*out)[i];
    const int64_t experts = experts_per_owner[i];
    if (expert + experts > static_cast<int64_t>(node.counts.size()))
      throw Error("node block: the owners hold more experts than the block counts");
    s.rows = 0;
    for (int64_t e = expert; e < expert + experts; ++e) s.rows += node.counts[e];
    Dedup dd;
    dd.index.resize(s.rows);
    s.node_token.clear();
    for (int64_t r = 0; r < s.rows; ++r) {
      const int32_t t = node.index[row + r];
      if (owner_unique[t] < 0) {
        owner_unique[t] = static_cast<int32_t>(s.node_token.size());
        s.node_token.push_back(t);
      }
      dd.index[r] = owner_unique[t];
    }
    for (int32_t t : s.node_token) owner_unique[t] = -1;
    // The owner's block: its counts and index, then its unique tokens' rows.
    dd.first.assign(s.node_token.size(), 0);
    PackDispatch(node.counts.data() + expert, experts, nullptr, s.rows, 0, &dd, &s.box);
    const size_t header = s.box.size();
    s.box.resize(header + s.node_token.size() * row_bytes);
    for (size_t u = 0; u < s.node_token.size(); ++u)
      std::memcpy(s.box.data() + header + u * row_bytes, node.data + s.node_token[u] * d, row_bytes);
    expert += experts;
    row += s.rows;
  }
}

void AddToNodeSums(const NodeSplit& owner, const float* owner_sums, int64_t d, float* node_sums) {
  for (size_t u = 0; u < owner.node_token.size(); ++u) {
    float* dst = node_sums + owner.node_token[u] * d;
    const float* src = owner_sums + u * d;
    for (int64_t c = 0; c < d; ++c) dst[c] += src[c];
  }
}

void WriteRouteWord(RouteBlock kind, std::vector<char>* box) {
  const int64_t word = static_cast<int64_t>(kind);
  if (box->size() < kRouteWordBytes) box->resize(kRouteWordBytes);
  std::memcpy(box->data(), &word, kRouteWordBytes);
}

RouteBlock ReadRouteWord(const char* box, size_t bytes) {
  int64_t word = -1;
  if (bytes >= kRouteWordBytes) std::memcpy(&word, box, kRouteWordBytes);
  if (word != static_cast<int64_t>(RouteBlock::kOwn) && word != static_cast<int64_t>(RouteBlock::kNode) &&
      word != static_cast<int64_t>(RouteBlock::kRelayed))
    throw Error("corrupt dispatch header (route word " + std::to_string(word) + ")");
  return static_cast<RouteBlock>(word);
}

}  // namespace hetermoe::parallel::wire
