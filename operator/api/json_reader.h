// JsonReader: strict, path-aware reading of a JSON object into C++ types.
//
// Every field a parser asks for is recorded with its full path
// ("spec.attention.replicas"); Finish() rejects keys nobody asked for. Both
// facts feed the CRD drift test: the paths the operator reads must exist in
// the CRD schema, and a document built from the schema must be fully read.
//
// Errors are hetermoe::Error naming the path and the problem. A JsonReader
// borrows the JSON value; it is a short-lived stack object, not thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

namespace hetermoe::op {

class JsonReader {
 public:
  // `visited`, when given, collects every path asked for (for the drift test).
  JsonReader(const nlohmann::json& object, std::string path, std::set<std::string>* visited = nullptr);

  std::optional<std::string> String(const std::string& key);
  std::optional<int64_t> Int(const std::string& key);
  std::optional<double> Number(const std::string& key);
  std::optional<bool> Bool(const std::string& key);
  // An object or array kept as raw JSON (pod templates, inline configs).
  std::optional<nlohmann::json> Raw(const std::string& key);
  // The value whatever its type (int-or-string fields).
  const nlohmann::json* Any(const std::string& key);
  // Calls `read` with a reader for the nested object, if present.
  bool Object(const std::string& key, const std::function<void(JsonReader&)>& read);
  // Calls `read` for each element of an array of objects (path "key[]").
  bool ObjectArray(const std::string& key, const std::function<void(JsonReader&)>& read);
  std::optional<std::vector<std::string>> StringArray(const std::string& key);

  // Throws when the object holds a key that was never asked for.
  void Finish() const;

  const std::string& path() const { return path_; }

 private:
  const nlohmann::json* Find(const std::string& key);
  [[noreturn]] void Fail(const std::string& key, const std::string& what) const;

  const nlohmann::json& object_;
  std::string path_;
  std::set<std::string>* visited_;
  std::set<std::string> asked_;
};

}  // namespace hetermoe::op
