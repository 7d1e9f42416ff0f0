// HierMoE's token deduplication, as the planner prices it: a token whose k
// chosen experts share a destination (an expert rank, a node) is sent there
// once. Under uniform routing (each token's k experts a uniform draw of k
// distinct experts of E) the expected number of distinct destinations per
// token is
//   sum over destinations g of P(one of the token's experts is on g)
//     = sum_g 1 - C(E - e_g, k) / C(E, k)         (e_g experts on g),
// and the duplicate share, the rows a plain all-to-all sends that
// deduplication saves, is 1 - that / k (HierMoE's table, algorithms.md
// section 2; as E grows it tends to the with-replacement value
// 1 - R (1 - (1 - 1/R)^k) / k for R equal destinations).
//
// MeasureDuplicateShare draws the routing instead, for the command that
// reproduces the paper's table (hetermoe-plan dedup) and to check the
// formula.
#pragma once

#include <cstdint>
#include <vector>

namespace hetermoe::planner {

// Expected destinations a token reaches, of those holding `experts_on`
// (the experts of each destination; their sum at most `experts`, the rest
// held by no destination counted here), choosing top_k of `experts`.
double ExpectedDestinations(int64_t experts, const std::vector<int64_t>& experts_on, int64_t top_k);
// P(a token chooses at least one of `held` experts of `experts`, top_k of them).
double ReachProbability(int64_t experts, int64_t held, int64_t top_k);
// Duplicate share for `groups` equal destinations (experts % groups == 0).
double DuplicateShare(int64_t experts, int64_t groups, int64_t top_k);
// The same, measured over `tokens` tokens routed uniformly at random
// (seeded): 1 - (distinct (token, group) pairs) / (tokens * top_k).
double MeasureDuplicateShare(int64_t experts, int64_t groups, int64_t top_k, int64_t tokens, uint64_t seed);

}  // namespace hetermoe::planner
