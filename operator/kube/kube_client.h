// KubeClient: a small Kubernetes REST client (cpprestsdk underneath, kept out
// of this header because every file including cpprest takes ~10 s to build).
//
// What it does, as client-go does: TLS verified against the cluster CA only
// (the system trust store is replaced), bearer token or client certificate,
// a client-side token bucket (qps/burst) in front of every request, JSON
// bodies, merge-patch (application/merge-patch+json), server-side apply
// (application/apply-patch+yaml with fieldManager and force), list with
// limit/continue, and watch: a long GET whose body is newline-delimited JSON
// events handed to a callback one whole line at a time.
//
// Every failure is an ApiError (code 0 when the server did not answer).
// Thread-safe: requests may be issued from many threads at once. A watch
// blocks its calling thread; Cancel() on its WatchHandle (from any thread)
// ends it with no error.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "operator/kube/api_error.h"
#include "operator/kube/kube_config.h"

namespace hetermoe::op {

struct ClientOptions {
  double qps = 50;
  int burst = 100;
  std::string user_agent = "hetermoe-operator/0.1";
  int request_timeout_seconds = 30;
  // Called after every request with its method and HTTP code (0 = no answer).
  std::function<void(const std::string& method, int code)> on_request;
};

struct ListOptions {
  std::string label_selector;
  std::string field_selector;
  int64_t limit = 0;         // 0 = no paging
  std::string continue_token;
  std::string resource_version;
};

struct WatchOptions {
  std::string resource_version;
  std::string label_selector;
  std::string field_selector;
  int timeout_seconds = 300;   // the server ends the watch after this
  bool allow_bookmarks = true;
};

// Cancels a running watch from another thread.
class WatchHandle {
 public:
  virtual ~WatchHandle() = default;
  virtual void Cancel() = 0;
};

class KubeClient {
 public:
  KubeClient(KubeConfig config, ClientOptions options = {});
  ~KubeClient();
  KubeClient(const KubeClient&) = delete;
  KubeClient& operator=(const KubeClient&) = delete;

  nlohmann::json Get(const std::string& path);
  // One page (options.limit) or everything (limit 0).
  nlohmann::json List(const std::string& path, const ListOptions& options = {});
  // Every page, following `continue`; returns the items and the list's resourceVersion.
  std::vector<nlohmann::json> ListAll(const std::string& path, const ListOptions& options, std::string* resource_version);
  nlohmann::json Create(const std::string& collection_path, const nlohmann::json& object);
  nlohmann::json Replace(const std::string& path, const nlohmann::json& object);
  nlohmann::json MergePatch(const std::string& path, const nlohmann::json& patch);
  nlohmann::json Apply(const std::string& path, const nlohmann::json& object, const std::string& field_manager,
                       bool force = true);
  // Returns false when the object was already gone (404).
  bool Delete(const std::string& path, const nlohmann::json& options = nullptr);

  // Streams events; `on_event` gets each parsed event object ({type, object})
  // and returns false to stop. Returns normally when the server closes the
  // stream, `on_event` says stop, or `handle` is cancelled; throws ApiError
  // for an HTTP error (410 Gone included) or a broken connection.
  void Watch(const std::string& path, const WatchOptions& options,
             const std::function<bool(const nlohmann::json& event)>& on_event,
             const std::shared_ptr<WatchHandle>& handle = nullptr);
  // A handle for Watch(), cancellable before or during the watch.
  static std::shared_ptr<WatchHandle> NewWatchHandle();

  const KubeConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hetermoe::op
