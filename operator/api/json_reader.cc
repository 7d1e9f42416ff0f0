// JsonReader: see json_reader.h.
#include "operator/api/json_reader.h"

#include <cmath>

#include "common/error.h"

namespace hetermoe::op {

using nlohmann::json;

JsonReader::JsonReader(const json& object, std::string path, std::set<std::string>* visited)
    : object_(object), path_(std::move(path)), visited_(visited) {
  if (!object_.is_object()) throw Error(path_ + ": expected an object, got " + object_.type_name());
}

const json* JsonReader::Find(const std::string& key) {
  asked_.insert(key);
  if (visited_) visited_->insert(path_.empty() ? key : path_ + "." + key);
  auto it = object_.find(key);
  if (it == object_.end() || it->is_null()) return nullptr;
  return &*it;
}

void JsonReader::Fail(const std::string& key, const std::string& what) const {
  throw Error((path_.empty() ? key : path_ + "." + key) + ": " + what);
}

std::optional<std::string> JsonReader::String(const std::string& key) {
  const json* v = Find(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) Fail(key, std::string("expected a string, got ") + v->type_name());
  return v->get<std::string>();
}

std::optional<int64_t> JsonReader::Int(const std::string& key) {
  const json* v = Find(key);
  if (!v) return std::nullopt;
  if (v->is_number_integer()) return v->get<int64_t>();
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (std::floor(d) == d && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  Fail(key, std::string("expected an integer, got ") + v->dump());
}

std::optional<double> JsonReader::Number(const std::string& key) {
  const json* v = Find(key);
  if (!v) return std::nullopt;
  if (!v->is_number()) Fail(key, std::string("expected a number, got ") + v->type_name());
  return v->get<double>();
}

std::optional<bool> JsonReader::Bool(const std::string& key) {
  const json* v = Find(key);
  if (!v) return std::nullopt;
  if (!v->is_boolean()) Fail(key, std::string("expected a boolean, got ") + v->type_name());
  return v->get<bool>();
}

std::optional<json> JsonReader::Raw(const std::string& key) {
  const json* v = Find(key);
  if (!v) return std::nullopt;
  return *v;
}

const json* JsonReader::Any(const std::string& key) { return Find(key); }

bool JsonReader::Object(const std::string& key, const std::function<void(JsonReader&)>& read) {
  const json* v = Find(key);
  if (!v) return false;
  JsonReader nested(*v, path_.empty() ? key : path_ + "." + key, visited_);
  read(nested);
  nested.Finish();
  return true;
}

bool JsonReader::ObjectArray(const std::string& key, const std::function<void(JsonReader&)>& read) {
  const json* v = Find(key);
  if (!v) return false;
  if (!v->is_array()) Fail(key, std::string("expected an array, got ") + v->type_name());
  std::string base = (path_.empty() ? key : path_ + "." + key) + "[]";
  if (visited_) visited_->insert(base);
  for (const json& element : *v) {
    JsonReader nested(element, base, visited_);
    read(nested);
    nested.Finish();
  }
  return true;
}

std::optional<std::vector<std::string>> JsonReader::StringArray(const std::string& key) {
  const json* v = Find(key);
  if (!v) return std::nullopt;
  if (!v->is_array()) Fail(key, std::string("expected an array, got ") + v->type_name());
  if (visited_) visited_->insert((path_.empty() ? key : path_ + "." + key) + "[]");
  std::vector<std::string> out;
  for (const json& element : *v) {
    if (!element.is_string()) Fail(key, "expected an array of strings");
    out.push_back(element.get<std::string>());
  }
  return out;
}

void JsonReader::Finish() const {
  for (auto it = object_.begin(); it != object_.end(); ++it) {
    if (!asked_.count(it.key())) Fail(it.key(), "unknown field");
  }
}

}  // namespace hetermoe::op
