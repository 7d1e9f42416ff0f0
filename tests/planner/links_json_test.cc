// The measured links' JSON profile (planner/links_json.h): what the trainer
// writes reads back to the same links, and a bad profile is refused naming
// the field.
#include "planner/links_json.h"

#include <gtest/gtest.h>

#include <string>

#include "common/error.h"

namespace hetermoe::planner {
namespace {

std::string ErrorOf(const std::string& text) {
  try {
    LinksFromJson(text, "links.json");
  } catch (const Error& e) {
    return e.what();
  }
  return "(accepted)";
}

TEST(LinksJson, RoundTripsTheFittedLinks) {
  const MeasuredLinks links{{104.5e-6, 8e-9 / 0.39}, {12.25e-6, 8e-9 / 19.6}, "gloo"};
  const MeasuredLinks back = LinksFromJson(LinksToJson(links), "links.json");
  EXPECT_NEAR(back.inter_node.alpha, links.inter_node.alpha, 1e-12);
  EXPECT_NEAR(back.inter_node.beta, links.inter_node.beta, 1e-9 * links.inter_node.beta);
  EXPECT_NEAR(back.intra_node.alpha, links.intra_node.alpha, 1e-12);
  EXPECT_NEAR(back.intra_node.beta, links.intra_node.beta, 1e-9 * links.intra_node.beta);
  EXPECT_EQ(back.measured_over, "gloo");
  EXPECT_NE(LinksToJson(links).find("\"gbps\": 0.39"), std::string::npos) << LinksToJson(links);
}

TEST(LinksJson, BadProfilesAreRefusedNamingTheField) {
  const std::string good =
      R"({"format": "hetermoe-links/1", "inter_node": {"latency_us": 100, "gbps": 1},
          "intra_node": {"latency_us": 10, "gbps": 10}})";
  EXPECT_EQ(ErrorOf(good), "(accepted)");
  EXPECT_EQ(ErrorOf("{not json"), "links.json: not a JSON object");
  EXPECT_EQ(ErrorOf(R"({"format": "hetermoe-links/2"})"), "links.json: format is not hetermoe-links/1");
  EXPECT_EQ(ErrorOf(R"({"format": 1})"), "links.json: format is not hetermoe-links/1");
  EXPECT_EQ(ErrorOf(R"({"format": "hetermoe-links/1", "inter_node": {"latency_us": 1, "gbps": 1}})"),
            "links.json: no intra_node link");
  EXPECT_EQ(ErrorOf(R"({"format": "hetermoe-links/1", "inter_node": {"latency_us": 1, "gbps": 0},
                       "intra_node": {"latency_us": 1, "gbps": 1}})"),
            "links.json: inter_node.gbps must be > 0");
  EXPECT_EQ(ErrorOf(R"({"format": "hetermoe-links/1", "inter_node": {"latency_us": -1, "gbps": 1},
                       "intra_node": {"latency_us": 1, "gbps": 1}})"),
            "links.json: inter_node.latency_us must be >= 0");
  EXPECT_EQ(ErrorOf(R"({"format": "hetermoe-links/1", "inter_node": {"latency_us": 1, "gbps": "fast"},
                       "intra_node": {"latency_us": 1, "gbps": 1}})"),
            "links.json: inter_node.gbps is missing or not a number");
}

}  // namespace
}  // namespace hetermoe::planner
