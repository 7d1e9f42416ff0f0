#include "trainer/parallel/placement.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"

namespace hetermoe::parallel {

namespace {

// Splits [first, first + n) over `parts` owners as evenly as possible.
std::vector<ExpertRange> Split(int64_t first, int64_t n, int parts) {
  std::vector<ExpertRange> out;
  int64_t at = first;
  for (int i = 0; i < parts; ++i) {
    const int64_t c = n / parts + (i < n % parts ? 1 : 0);
    out.push_back({at, c});
    at += c;
  }
  return out;
}

}  // namespace

Placement MakePlacement(Schedule schedule, int M, int N, int groups, int layers, int64_t E,
                        int R, const std::vector<int>& offloaded) {
  Placement p;
  p.schedule = schedule;
  p.groups = groups;
  p.group_size = M + N;
  p.attention_per_group = schedule == Schedule::kEp ? M + N : M;
  p.layers = layers;
  p.experts = E;
  p.micro_batches = R;
  const int attention_total = p.attention_per_group * groups;
  if (R % attention_total != 0)
    throw Error("parallel: train.micro_batches (" + std::to_string(R) + ") must be a multiple of the " +
                std::to_string(attention_total) + " attention ranks (" +
                std::to_string(p.attention_per_group) + " per group x " + std::to_string(groups) +
                " groups), which each take whole micro-batches");
  p.micro_per_rank = R / attention_total;
  if (schedule == Schedule::kEp) {
    if (!offloaded.empty())
      for (int o : offloaded)
        if (o != 0) throw Error("parallel.asym_ea: not applicable to the ep schedule");
    p.offloaded.assign(layers, 0);
    // With more ranks than experts, the last ranks hold none (attention only).
    for (int l = 0; l < layers; ++l) p.owners.push_back(Split(0, E, p.group_size));
    return p;
  }
  p.offloaded = offloaded.empty() ? std::vector<int>(layers, 0) : offloaded;
  if (static_cast<int>(p.offloaded.size()) != layers)
    throw Error("parallel.asym_ea: " + std::to_string(p.offloaded.size()) + " entries for " +
                std::to_string(layers) + " layers");
  if (E < N)
    throw Error("parallel: " + std::to_string(E) + " experts per layer cannot fill " +
                std::to_string(N) + " expert ranks");
  for (int l = 0; l < layers; ++l) {
    const int o = p.offloaded[l];
    if (o % M != 0)
      throw Error("parallel.asym_ea: layer " + std::to_string(l) + " moves " + std::to_string(o) +
                  " experts, not a multiple of the " + std::to_string(M) + " attention ranks");
    if (E - o < N)
      throw Error("parallel.asym_ea: layer " + std::to_string(l) + " moves " + std::to_string(o) +
                  " of " + std::to_string(E) + " experts, leaving fewer than one per expert rank");
    std::vector<ExpertRange> owners = Split(E - o, o, M);  // attention ranks: the last o
    const auto expert = Split(0, E - o, N);
    owners.insert(owners.end(), expert.begin(), expert.end());
    p.owners.push_back(std::move(owners));
  }
  return p;
}

std::string Placement::ToJson() const {
  nlohmann::json ranks = nlohmann::json::array();
  for (int r = 0; r < world_size(); ++r) {
    nlohmann::json experts = nlohmann::json::array();
    for (int l = 0; l < layers; ++l) {
      const ExpertRange& e = owners[l][LocalOf(r)];
      nlohmann::json ids = nlohmann::json::array();
      for (int64_t x = e.first; x < e.first + e.count; ++x) ids.push_back(x);
      experts.push_back(ids);
    }
    nlohmann::json micro = nlohmann::json::array();
    if (IsAttention(r))
      for (int j = 0; j < micro_per_rank; ++j) micro.push_back(MicroBatchOf(r, j));
    ranks.push_back({{"rank", r},
                     {"group", GroupOf(r)},
                     {"role", IsAttention(r) ? "attention" : "expert"},
                     {"micro_batches", micro},
                     {"experts", experts}});
  }
  return nlohmann::json{{"format", "hetermoe-placement/1"},
                        {"schedule", ScheduleName(schedule)},
                        {"groups", groups},
                        {"ranks_per_group", group_size},
                        {"attention_per_group", attention_per_group},
                        {"micro_batches", micro_batches},
                        {"asym_ea", offloaded},
                        {"ranks", ranks}}
      .dump(2);
}

std::string Placement::Describe() const {
  std::ostringstream os;
  os << ScheduleName(schedule) << ": " << groups << " group(s) of " << attention_per_group
     << " attention + " << (schedule == Schedule::kEp ? 0 : group_size - attention_per_group)
     << " expert ranks; " << micro_per_rank << " micro-batch(es) per attention rank\n";
  for (int l = 0; l < layers; ++l) {
    os << "  layer " << l << ":";
    for (int i = 0; i < group_size; ++i) {
      const auto& r = owners[l][i];
      os << " [" << i << (i < attention_per_group ? "A" : "E") << ": ";
      if (r.count == 0) os << "-";
      else os << r.first << ".." << r.first + r.count - 1;
      os << "]";
    }
    os << "\n";
  }
  return os.str();
}

std::vector<bool> Placement::SequencesOf(int rank, int64_t global_batch, int64_t micro_batches) const {
  std::vector<bool> used(static_cast<size_t>(global_batch), false);
  if (!IsAttention(rank)) return used;
  const int64_t per = global_batch / micro_batches;
  for (int j = 0; j < micro_per_rank; ++j)
    for (int64_t i = 0; i < per; ++i) used[static_cast<size_t>(MicroBatchOf(rank, j) * per + i)] = true;
  return used;
}

double LoadImbalance(const std::vector<double>& loads) {
  double total = 0, most = 0;
  for (double x : loads) total += x, most = std::max(most, x);
  return total > 0 ? most * static_cast<double>(loads.size()) / total : 0;
}

}  // namespace hetermoe::parallel
