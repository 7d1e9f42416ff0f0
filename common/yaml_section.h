// Section: one YAML mapping read key by key, as the run file's sections are
// (trainer/run/run_config.cc), on the shared field reader (yaml_fields.h).
// Get() records each key it reads, Finish() rejects every other key; errors
// read "<source>: <section>.<key> <problem>", e.g. "run.yaml: train.steps is
// required". Not thread-safe.
#pragma once

#include <optional>
#include <set>
#include <string>

#include <yaml-cpp/yaml.h>

#include "common/yaml_fields.h"

namespace hetermoe::yaml_fields {

class Section {
 public:
  // `node` may be absent (a section the file leaves out): every Get() then
  // keeps its default.
  Section(const YAML::Node& node, std::string name, const std::string& source);

  // Leaves *out as it is when the key is absent or null (unless required).
  template <typename T>
  void Get(const std::string& key, T* out, bool required = false);
  void Finish();

  std::string Dotted(const std::string& key) const { return where_.Key(key).path; }
  [[noreturn]] void Fail(const std::string& key, const std::string& problem) const;

 private:
  [[noreturn]] void FailWrongType(const std::string& key, const YAML::Node& value) const;

  YAML::Node node_;
  Where where_;  // the source and the section's name
  std::set<std::string> known_;
};

template <typename T>
void Section::Get(const std::string& key, T* out, bool required) {
  known_.insert(key);
  const YAML::Node v = node_ ? node_[key] : YAML::Node();
  if (!v || v.IsNull()) {
    if (required) Fail(Dotted(key), "is required");
    return;
  }
  const std::optional<T> value = Convert<T>(v);
  if (!value) FailWrongType(key, v);
  *out = *value;
}

}  // namespace hetermoe::yaml_fields
