// Typed field access for YAML inputs, the one reader every part uses (the
// planner's inventory and profiles; the run file through yaml_section.h),
// with errors that name the file and the field: "cluster.yaml: nodes[1].count:
// expected a positive integer, got 'four'". yaml-cpp's own exceptions never
// escape these helpers.
#pragma once

#include <initializer_list>
#include <optional>
#include <string>

#include <yaml-cpp/yaml.h>

namespace hetermoe::yaml_fields {

// Where a node sits, for messages: source file plus a path like "nodes[1]".
struct Where {
  std::string source;
  std::string path;

  Where Key(const std::string& key) const;
  Where Index(size_t i) const;
  [[noreturn]] void Fail(const std::string& problem) const;
};

YAML::Node ParseDocument(const std::string& text, const std::string& source);
void RequireMap(const YAML::Node& node, const Where& where);
void RequireSequence(const YAML::Node& node, const Where& where);
// Fails on a key not in `allowed` (catches typos such as "gpus:" for "gpu:").
void CheckKeys(const YAML::Node& map, std::initializer_list<const char*> allowed, const Where& where);

std::optional<std::string> OptionalString(const YAML::Node& map, const char* key, const Where& where);
std::optional<double> OptionalDouble(const YAML::Node& map, const char* key, const Where& where);
std::optional<long long> OptionalInt(const YAML::Node& map, const char* key, const Where& where);
std::string RequiredString(const YAML::Node& map, const char* key, const Where& where);
double RequiredDouble(const YAML::Node& map, const char* key, const Where& where);
long long RequiredInt(const YAML::Node& map, const char* key, const Where& where);

// node.as<T>(), or nullopt when yaml-cpp cannot convert the node to T.
template <typename T>
std::optional<T> Convert(const YAML::Node& node) {
  try {
    return node.as<T>();
  } catch (const YAML::Exception&) {
    return std::nullopt;
  }
}

}  // namespace hetermoe::yaml_fields
