// Informer: see informer.h.
#include "operator/machinery/informer.h"

#include <chrono>
#include <random>

namespace hetermoe::op {

using nlohmann::json;

std::string ObjectKey(const json& object) {
  const json& meta = object.at("metadata");
  std::string ns = meta.value("namespace", "");
  std::string name = meta.value("name", "");
  return ns.empty() ? name : ns + "/" + name;
}

Informer::Informer(KubeClient& client, Options options) : client_(client), options_(std::move(options)) {}

Informer::~Informer() { Stop(); }

void Informer::AddHandler(Handler handler) { handlers_.push_back(std::move(handler)); }
void Informer::AddIndex(const std::string& name, IndexFunc func) { index_funcs_[name] = std::move(func); }

void Informer::Start() {
  stop_ = false;
  thread_ = std::thread([this] { Run(); });
}

void Informer::Stop() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stop_ = true;
    if (watch_handle_) watch_handle_->Cancel();
  }
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool Informer::WaitForSync(double timeout_seconds) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  while (!synced_) {
    if (std::chrono::steady_clock::now() >= deadline || stop_) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

bool Informer::SleepFor(double seconds) {
  std::unique_lock<std::mutex> lock(stop_mu_);
  stop_cv_.wait_for(lock, std::chrono::duration<double>(seconds), [this] { return stop_.load(); });
  return !stop_;
}

std::string Informer::CollectionPath() const { return options_.resource.Path(options_.namespace_); }

ObjectPtr Informer::Get(const std::string& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = store_.find(key);
  return it == store_.end() ? nullptr : it->second;
}

std::vector<ObjectPtr> Informer::List() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ObjectPtr> out;
  out.reserve(store_.size());
  for (const auto& [key, obj] : store_) out.push_back(obj);
  return out;
}

std::vector<ObjectPtr> Informer::ByIndex(const std::string& index, const std::string& value) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<ObjectPtr> out;
  auto idx = indices_.find(index);
  if (idx == indices_.end()) return out;
  auto keys = idx->second.find(value);
  if (keys == idx->second.end()) return out;
  for (const std::string& key : keys->second) {
    auto it = store_.find(key);
    if (it != store_.end()) out.push_back(it->second);
  }
  return out;
}

size_t Informer::Size() const {
  std::lock_guard<std::mutex> lock(mu_);
  return store_.size();
}

std::string Informer::last_error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_error_;
}

void Informer::IndexLocked(const std::string& key, const json* old_obj, const json* new_obj) {
  for (const auto& [name, func] : index_funcs_) {
    auto& index = indices_[name];
    if (old_obj)
      for (const std::string& v : func(*old_obj)) {
        auto it = index.find(v);
        if (it == index.end()) continue;
        it->second.erase(key);
        if (it->second.empty()) index.erase(it);
      }
    if (new_obj)
      for (const std::string& v : func(*new_obj)) index[v].insert(key);
  }
}

void Informer::Notify(const ObjectPtr& old, const ObjectPtr& now) {
  for (const Handler& h : handlers_) h(old, now);
}

void Informer::Upsert(json object) {
  if (object.contains("metadata")) object["metadata"].erase("managedFields");
  auto now = std::make_shared<const json>(std::move(object));
  const std::string key = ObjectKey(*now);
  ObjectPtr old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = store_.find(key);
    if (it != store_.end()) old = it->second;
    IndexLocked(key, old.get(), now.get());
    store_[key] = now;
  }
  Notify(old, now);
}

void Informer::Remove(const json& object) {
  const std::string key = ObjectKey(object);
  ObjectPtr old;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = store_.find(key);
    if (it == store_.end()) return;
    old = it->second;
    IndexLocked(key, old.get(), nullptr);
    store_.erase(it);
  }
  Notify(old, nullptr);
}

std::string Informer::ListAndReplace() {
  ListOptions o;
  o.label_selector = options_.label_selector;
  o.limit = options_.page_size;
  std::string rv;
  std::vector<json> items = client_.ListAll(CollectionPath(), o, &rv);
  ++relists_;
  // Deletions first: objects the list no longer holds.
  std::set<std::string> listed;
  for (const json& item : items) listed.insert(ObjectKey(item));
  std::vector<ObjectPtr> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, obj] : store_)
      if (!listed.count(key)) gone.push_back(obj);
  }
  for (const ObjectPtr& obj : gone) Remove(*obj);
  for (json& item : items) {
    // Unchanged objects (same resourceVersion) are not reported again.
    ObjectPtr existing = Get(ObjectKey(item));
    if (existing && (*existing)["metadata"].value("resourceVersion", "") ==
                        item["metadata"].value("resourceVersion", ""))
      continue;
    Upsert(std::move(item));
  }
  return rv;
}

bool Informer::WatchFrom(std::string& rv) {
  WatchOptions o;
  o.resource_version = rv;
  o.label_selector = options_.label_selector;
  // Spread the reconnects of many informers (client-go: timeout in [t, 2t)).
  static thread_local std::mt19937 rng(std::random_device{}());
  o.timeout_seconds = options_.watch_timeout_seconds +
                      std::uniform_int_distribution<int>(0, std::max(1, options_.watch_timeout_seconds) - 1)(rng);
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (stop_) return true;
    watch_handle_ = KubeClient::NewWatchHandle();
  }
  bool relist = false;
  ++watches_;
  client_.Watch(
      CollectionPath(), o,
      [&](const json& event) {
        const std::string type = event.value("type", "");
        const json& object = event.at("object");
        if (type == "ERROR") {
          int code = object.value("code", 0);
          if (code == 410) {
            relist = true;
            return false;
          }
          throw ApiError(code, object.value("reason", ""), "watch " + CollectionPath() + ": " + object.value("message", ""));
        }
        const std::string new_rv = object["metadata"].value("resourceVersion", "");
        if (type == "ADDED" || type == "MODIFIED") Upsert(object);
        else if (type == "DELETED") Remove(object);
        // BOOKMARK: only the resourceVersion moves.
        if (!new_rv.empty()) rv = new_rv;
        return !stop_;
      },
      watch_handle_);
  return !relist;
}

void Informer::Run() {
  std::string rv;
  bool need_list = true;
  double backoff = options_.backoff_initial_seconds;
  while (!stop_) {
    try {
      if (need_list) {
        rv = ListAndReplace();
        need_list = false;
        synced_ = true;
      }
      if (!WatchFrom(rv)) need_list = true;
      backoff = options_.backoff_initial_seconds;
      std::lock_guard<std::mutex> lock(mu_);
      last_error_.clear();
    } catch (const ApiError& e) {
      if (stop_) break;
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_error_ = e.what();
      }
      if (e.Gone()) {
        need_list = true;  // compacted: relist at once
        continue;
      }
      if (!SleepFor(backoff)) break;
      backoff = std::min(options_.backoff_max_seconds, backoff * 2);
    } catch (const std::exception& e) {
      if (stop_) break;
      {
        std::lock_guard<std::mutex> lock(mu_);
        last_error_ = e.what();
      }
      if (!SleepFor(backoff)) break;
      backoff = std::min(options_.backoff_max_seconds, backoff * 2);
    }
  }
}

}  // namespace hetermoe::op
