// Informer: a local cache of one kind of object kept in step with the
// apiserver by list-then-watch, as client-go's reflector + store.
//
//  - List (paged: limit + continue) fills the cache, then a watch resumes
//    from the list's resourceVersion with bookmarks, so a quiet watch still
//    advances its resourceVersion;
//  - a watch that ends (server timeout, dropped connection) is resumed from
//    the last resourceVersion seen, after an exponential backoff when it
//    failed;
//  - 410 Gone (as the HTTP status or as an in-stream ERROR event) means the
//    resourceVersion was compacted away: list again and replace the cache,
//    reporting the differences as add/update/delete so nothing is lost and
//    nothing is handled twice.
// Objects are stored without metadata.managedFields (memory). Handlers run
// on the informer's thread; the cache is readable from any thread.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/kube/kube_client.h"
#include "operator/kube/resource.h"

namespace hetermoe::op {

using ObjectPtr = std::shared_ptr<const nlohmann::json>;

// "namespace/name", or "name" for cluster-scoped objects.
std::string ObjectKey(const nlohmann::json& object);

class Informer {
 public:
  struct Options {
    Resource resource;
    std::string namespace_;        // "" = all namespaces
    std::string label_selector;
    int64_t page_size = 500;
    int watch_timeout_seconds = 300;
    double backoff_initial_seconds = 0.5;
    double backoff_max_seconds = 30;
  };
  // old == nullptr: added; now == nullptr: deleted.
  using Handler = std::function<void(const ObjectPtr& old, const ObjectPtr& now)>;
  using IndexFunc = std::function<std::vector<std::string>(const nlohmann::json&)>;

  Informer(KubeClient& client, Options options);
  ~Informer();

  // Before Start().
  void AddHandler(Handler handler);
  void AddIndex(const std::string& name, IndexFunc func);

  void Start();
  void Stop();
  bool HasSynced() const { return synced_; }
  bool WaitForSync(double timeout_seconds);

  ObjectPtr Get(const std::string& key) const;
  std::vector<ObjectPtr> List() const;
  std::vector<ObjectPtr> ByIndex(const std::string& index, const std::string& value) const;
  size_t Size() const;

  // Counters for tests and logs.
  uint64_t relists() const { return relists_; }
  uint64_t watches() const { return watches_; }
  const Options& options() const { return options_; }
  // The last error the loop met ("" after a successful watch start).
  std::string last_error() const;

 private:
  void Run();
  std::string ListAndReplace();  // returns the resourceVersion
  // Returns false when a relist is needed.
  bool WatchFrom(std::string& resource_version);
  void Upsert(nlohmann::json object);
  void Remove(const nlohmann::json& object);
  void IndexLocked(const std::string& key, const nlohmann::json* old_obj, const nlohmann::json* new_obj);
  void Notify(const ObjectPtr& old, const ObjectPtr& now);
  bool SleepFor(double seconds);  // false when stopped
  std::string CollectionPath() const;

  KubeClient& client_;
  Options options_;
  std::vector<Handler> handlers_;
  std::map<std::string, IndexFunc> index_funcs_;

  mutable std::mutex mu_;
  std::map<std::string, ObjectPtr> store_;
  std::map<std::string, std::map<std::string, std::set<std::string>>> indices_;
  std::string last_error_;

  std::atomic<bool> synced_{false};
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> relists_{0}, watches_{0};
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  std::shared_ptr<WatchHandle> watch_handle_;
  std::thread thread_;
};

}  // namespace hetermoe::op
