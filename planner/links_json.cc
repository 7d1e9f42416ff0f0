// The measured links' JSON profile (see links_json.h).
#include "planner/links_json.h"

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace hetermoe::planner {

using nlohmann::json;

namespace {

constexpr const char* kFormat = "hetermoe-links/1";

json LinkToJson(const LinkCost& c) {
  return {{"latency_us", c.alpha * 1e6}, {"gbps", c.beta > 0 ? 8e-9 / c.beta : 0.0}};
}

LinkCost LinkFromJson(const json& doc, const char* name, const std::string& source) {
  if (!doc.contains(name) || !doc[name].is_object()) throw Error(source + ": no " + name + " link");
  const json& link = doc[name];
  auto number = [&](const char* key) {
    if (!link.contains(key) || !link[key].is_number())
      throw Error(source + ": " + name + "." + key + " is missing or not a number");
    return link[key].get<double>();
  };
  const double latency_us = number("latency_us"), gbps = number("gbps");
  if (latency_us < 0) throw Error(source + ": " + name + ".latency_us must be >= 0");
  if (!(gbps > 0)) throw Error(source + ": " + name + ".gbps must be > 0");
  return {latency_us * 1e-6, 8e-9 / gbps};
}

}  // namespace

std::string LinksToJson(const MeasuredLinks& links) {
  const json doc = {{"format", kFormat},
                    {"measured_over", links.measured_over},
                    {"inter_node", LinkToJson(links.inter_node)},
                    {"intra_node", LinkToJson(links.intra_node)}};
  return doc.dump(2) + "\n";
}

MeasuredLinks LinksFromJson(const std::string& text, const std::string& source) {
  const json doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) throw Error(source + ": not a JSON object");
  const auto format = doc.find("format");
  if (format == doc.end() || !format->is_string() || format->get<std::string>() != kFormat)
    throw Error(source + ": format is not " + std::string(kFormat));
  MeasuredLinks links;
  if (const auto over = doc.find("measured_over"); over != doc.end() && over->is_string())
    links.measured_over = over->get<std::string>();
  links.inter_node = LinkFromJson(doc, "inter_node", source);
  links.intra_node = LinkFromJson(doc, "intra_node", source);
  return links;
}

}  // namespace hetermoe::planner
