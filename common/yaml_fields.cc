// Typed YAML field access with located error messages.
#include "common/yaml_fields.h"

#include <cmath>

#include "common/error.h"

namespace hetermoe::yaml_fields {
namespace {

std::string Scalar(const YAML::Node& node) {
  return node.IsScalar() ? "'" + node.Scalar() + "'" : "a " + std::string(node.IsMap() ? "map" : "list");
}

}  // namespace

Where Where::Key(const std::string& key) const { return {source, path.empty() ? key : path + "." + key}; }

Where Where::Index(size_t i) const { return {source, path + "[" + std::to_string(i) + "]"}; }

void Where::Fail(const std::string& problem) const {
  throw Error(source + ": " + (path.empty() ? "" : path + ": ") + problem);
}

YAML::Node ParseDocument(const std::string& text, const std::string& source) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw Error(source + ": invalid YAML at line " + std::to_string(e.mark.line + 1) + ", column " +
                std::to_string(e.mark.column + 1) + ": " + e.msg);
  }
}

void RequireMap(const YAML::Node& node, const Where& where) {
  if (!node.IsMap()) where.Fail("expected a map");
}

void RequireSequence(const YAML::Node& node, const Where& where) {
  if (!node.IsSequence()) where.Fail("expected a list");
}

void CheckKeys(const YAML::Node& map, std::initializer_list<const char*> allowed, const Where& where) {
  for (const auto& entry : map) {
    const std::string key = entry.first.as<std::string>("");
    bool known = false;
    for (const char* a : allowed) known = known || key == a;
    if (!known) {
      std::string list;
      for (const char* a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
      where.Fail("unknown key '" + key + "' (expected one of: " + list + ")");
    }
  }
}

std::optional<std::string> OptionalString(const YAML::Node& map, const char* key, const Where& where) {
  const YAML::Node node = map[key];
  if (!node) return std::nullopt;
  if (!node.IsScalar() || node.Scalar().empty()) where.Key(key).Fail("expected a non-empty string");
  return node.Scalar();
}

std::optional<double> OptionalDouble(const YAML::Node& map, const char* key, const Where& where) {
  const YAML::Node node = map[key];
  if (!node) return std::nullopt;
  const std::optional<double> value = Convert<double>(node);
  if (!value) where.Key(key).Fail("expected a number, got " + Scalar(node));
  if (!std::isfinite(*value)) where.Key(key).Fail("expected a finite number, got " + Scalar(node));
  return value;
}

std::optional<long long> OptionalInt(const YAML::Node& map, const char* key, const Where& where) {
  const YAML::Node node = map[key];
  if (!node) return std::nullopt;
  const std::optional<long long> value = Convert<long long>(node);
  if (!value) where.Key(key).Fail("expected an integer, got " + Scalar(node));
  return value;
}

std::string RequiredString(const YAML::Node& map, const char* key, const Where& where) {
  auto value = OptionalString(map, key, where);
  if (!value) where.Key(key).Fail("missing");
  return *value;
}

double RequiredDouble(const YAML::Node& map, const char* key, const Where& where) {
  auto value = OptionalDouble(map, key, where);
  if (!value) where.Key(key).Fail("missing");
  return *value;
}

long long RequiredInt(const YAML::Node& map, const char* key, const Where& where) {
  auto value = OptionalInt(map, key, where);
  if (!value) where.Key(key).Fail("missing");
  return *value;
}

}  // namespace hetermoe::yaml_fields
