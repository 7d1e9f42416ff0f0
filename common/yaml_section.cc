#include "common/yaml_section.h"

#include "common/error.h"

namespace hetermoe::yaml_fields {

Section::Section(const YAML::Node& node, std::string name, const std::string& source)
    : node_(node), where_{source, std::move(name)} {
  if (node_ && !node_.IsMap()) Fail(where_.path, "must be a mapping");
}

void Section::Finish() {
  if (!node_) return;
  for (const auto& kv : node_) {
    const std::string key = kv.first.as<std::string>();
    if (!known_.count(key)) Fail(Dotted(key), "is not a known key");
  }
}

void Section::Fail(const std::string& key, const std::string& problem) const {
  throw Error(where_.source + ": " + key + " " + problem);
}

void Section::FailWrongType(const std::string& key, const YAML::Node& value) const {
  YAML::Emitter flow;
  flow << YAML::Flow << value;
  Fail(Dotted(key), "has the wrong type (got \"" + std::string(flow.c_str()) + "\")");
}

}  // namespace hetermoe::yaml_fields
