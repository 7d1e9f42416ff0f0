// KubeClient on cpprestsdk: see kube_client.h. The only file of the operator
// that includes cpprest headers.
#include "operator/kube/kube_client.h"

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

#include <boost/asio/ssl.hpp>
#include <cpprest/containerstream.h>
#include <cpprest/http_client.h>

#include "operator/machinery/rate_limiter.h"

namespace hetermoe::op {

using nlohmann::json;
namespace http = web::http;
namespace client = web::http::client;

namespace {

std::string Encode(const std::string& s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

class Query {
 public:
  Query& Add(const std::string& key, const std::string& value) {
    if (!value.empty()) s_ += (s_.empty() ? "?" : "&") + key + "=" + Encode(value);
    return *this;
  }
  std::string str() const { return s_; }

 private:
  std::string s_;
};

class CprestWatchHandle : public WatchHandle {
 public:
  void Cancel() override {
    cancelled_ = true;
    source_.cancel();
  }
  bool cancelled() const { return cancelled_; }
  pplx::cancellation_token token() const { return source_.get_token(); }

 private:
  std::atomic<bool> cancelled_{false};
  pplx::cancellation_token_source source_;
};

}  // namespace

struct KubeClient::Impl {
  KubeConfig cfg;
  ClientOptions opt;
  TokenBucket bucket;
  client::http_client http;

  Impl(KubeConfig c, ClientOptions o)
      : cfg(std::move(c)), opt(std::move(o)), bucket(opt.qps, opt.burst),
        http(web::uri(cfg.server), MakeConfig(opt.request_timeout_seconds)) {}

  client::http_client_config MakeConfig(int timeout_seconds) const {
    client::http_client_config config;
    config.set_timeout(std::chrono::seconds(timeout_seconds));
    config.set_validate_certificates(true);
    const std::string ca = cfg.ca_pem, cert = cfg.client_cert_pem, key = cfg.client_key_pem;
    config.set_ssl_context_callback([ca, cert, key](boost::asio::ssl::context& ctx) {
      // Trust the cluster CA only: drop the system store cpprest loaded.
      SSL_CTX_set_cert_store(ctx.native_handle(), X509_STORE_new());
      if (!ca.empty()) ctx.add_certificate_authority(boost::asio::buffer(ca.data(), ca.size()));
      if (!cert.empty()) {
        ctx.use_certificate_chain(boost::asio::buffer(cert.data(), cert.size()));
        ctx.use_private_key(boost::asio::buffer(key.data(), key.size()), boost::asio::ssl::context::pem);
      }
    });
    return config;
  }

  std::string Token() const {
    if (!cfg.token_file.empty()) {
      std::ifstream in(cfg.token_file);
      std::string token;
      std::getline(in, token);
      if (!token.empty()) return token;
    }
    return cfg.token;
  }

  void Throttle() {
    double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    double wait = bucket.Reserve(now);
    if (wait > 0) std::this_thread::sleep_for(std::chrono::duration<double>(wait));
  }

  http::http_request MakeRequest(const http::method& method, const std::string& path_query) const {
    http::http_request req(method);
    req.set_request_uri(web::uri(path_query));
    req.headers().add("Accept", "application/json");
    req.headers().add("User-Agent", opt.user_agent);
    std::string token = Token();
    if (!token.empty()) req.headers().add("Authorization", "Bearer " + token);
    return req;
  }

  [[noreturn]] void ThrowStatus(const std::string& what, int code, const std::string& body) const {
    std::string reason, message = body;
    try {
      json status = json::parse(body);
      reason = status.value("reason", "");
      message = status.value("message", body);
    } catch (...) {
    }
    if (message.size() > 300) message = message.substr(0, 300) + "...";
    throw ApiError(code, reason, what + ": " + std::to_string(code) + (reason.empty() ? "" : " " + reason) + ": " + message);
  }

  json Call(const http::method& method, const std::string& path_query, const std::string* body = nullptr,
            const std::string& content_type = "application/json") {
    Throttle();
    const std::string what = method + " " + path_query;
    http::http_request req = MakeRequest(method, path_query);
    if (body) req.set_body(*body, content_type);
    http::http_response resp;
    std::string text;
    try {
      resp = http.request(req).get();
      text = resp.extract_utf8string(true).get();
    } catch (const std::exception& e) {
      if (opt.on_request) opt.on_request(method, 0);
      throw ApiError(0, "", what + ": no answer: " + e.what());
    }
    int code = resp.status_code();
    if (opt.on_request) opt.on_request(method, code);
    if (code < 200 || code >= 300) ThrowStatus(what, code, text);
    if (text.empty()) return json::object();
    try {
      return json::parse(text);
    } catch (const json::parse_error& e) {
      throw ApiError(code, "", what + ": unreadable body: " + e.what());
    }
  }
};

KubeClient::KubeClient(KubeConfig config, ClientOptions options)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(options))) {}
KubeClient::~KubeClient() = default;

const KubeConfig& KubeClient::config() const { return impl_->cfg; }

json KubeClient::Get(const std::string& path) { return impl_->Call(http::methods::GET, path); }

json KubeClient::List(const std::string& path, const ListOptions& o) {
  Query q;
  q.Add("labelSelector", o.label_selector).Add("fieldSelector", o.field_selector);
  if (o.limit > 0) q.Add("limit", std::to_string(o.limit));
  q.Add("continue", o.continue_token).Add("resourceVersion", o.resource_version);
  return impl_->Call(http::methods::GET, path + q.str());
}

std::vector<json> KubeClient::ListAll(const std::string& path, const ListOptions& options, std::string* rv) {
  std::vector<json> items;
  ListOptions o = options;
  for (;;) {
    json page = List(path, o);
    for (json& item : page["items"]) items.push_back(std::move(item));
    const json meta = page.value("metadata", json::object());
    if (rv) *rv = meta.value("resourceVersion", "");
    o.continue_token = meta.value("continue", "");
    o.resource_version.clear();
    if (o.continue_token.empty()) return items;
  }
}

json KubeClient::Create(const std::string& collection_path, const json& object) {
  std::string body = object.dump();
  return impl_->Call(http::methods::POST, collection_path, &body);
}

json KubeClient::Replace(const std::string& path, const json& object) {
  std::string body = object.dump();
  return impl_->Call(http::methods::PUT, path, &body);
}

json KubeClient::MergePatch(const std::string& path, const json& patch) {
  std::string body = patch.dump();
  return impl_->Call(http::methods::PATCH, path, &body, "application/merge-patch+json");
}

json KubeClient::Apply(const std::string& path, const json& object, const std::string& field_manager, bool force) {
  std::string body = object.dump();  // JSON is YAML
  Query q;
  q.Add("fieldManager", field_manager);
  if (force) q.Add("force", "true");
  return impl_->Call(http::methods::PATCH, path + q.str(), &body, "application/apply-patch+yaml");
}

bool KubeClient::Delete(const std::string& path, const json& options) {
  try {
    if (options.is_null()) {
      impl_->Call(http::methods::DEL, path);
    } else {
      std::string body = options.dump();
      impl_->Call(http::methods::DEL, path, &body);
    }
    return true;
  } catch (const ApiError& e) {
    if (e.NotFound()) return false;
    throw;
  }
}

std::shared_ptr<WatchHandle> KubeClient::NewWatchHandle() { return std::make_shared<CprestWatchHandle>(); }

void KubeClient::Watch(const std::string& path, const WatchOptions& o,
                       const std::function<bool(const json& event)>& on_event,
                       const std::shared_ptr<WatchHandle>& handle_in) {
  auto handle = std::dynamic_pointer_cast<CprestWatchHandle>(handle_in ? handle_in : NewWatchHandle());
  if (!handle) throw Error("KubeClient::Watch: foreign WatchHandle");
  if (handle->cancelled()) return;
  Query q;
  q.Add("watch", "true").Add("resourceVersion", o.resource_version);
  q.Add("labelSelector", o.label_selector).Add("fieldSelector", o.field_selector);
  q.Add("timeoutSeconds", std::to_string(o.timeout_seconds));
  if (o.allow_bookmarks) q.Add("allowWatchBookmarks", "true");
  const std::string what = "WATCH " + path + q.str();

  impl_->Throttle();
  // The inactivity timeout must outlast the server's own timeout, which
  // ends the stream cleanly first.
  client::http_client http(web::uri(impl_->cfg.server), impl_->MakeConfig(o.timeout_seconds + 30));
  http::http_request req = impl_->MakeRequest(http::methods::GET, path + q.str());
  http::http_response resp;
  try {
    resp = http.request(req, handle->token()).get();
  } catch (const std::exception& e) {
    if (impl_->opt.on_request) impl_->opt.on_request("WATCH", 0);
    if (handle->cancelled()) return;
    throw ApiError(0, "", what + ": no answer: " + e.what());
  }
  const int code = resp.status_code();
  if (impl_->opt.on_request) impl_->opt.on_request("WATCH", code);
  if (code != 200) {
    std::string text;
    try {
      text = resp.extract_utf8string(true).get();
    } catch (...) {
    }
    impl_->ThrowStatus(what, code, text);
  }
  auto body = resp.body();
  try {
    for (;;) {
      concurrency::streams::container_buffer<std::string> line;
      // read_line waits for the whole line, however the server chunks it.
      size_t n = body.read_line(line).get();
      if (n == 0) {
        if (body.is_eof()) return;
        continue;
      }
      json event;
      try {
        event = json::parse(line.collection());
      } catch (const json::parse_error& e) {
        throw ApiError(0, "", what + ": unreadable event: " + e.what());
      }
      if (!on_event(event)) {
        handle->Cancel();
        return;
      }
    }
  } catch (const ApiError&) {
    throw;
  } catch (const std::exception& e) {
    if (handle->cancelled()) return;
    throw ApiError(0, "", what + ": stream broken: " + e.what());
  }
}

}  // namespace hetermoe::op
