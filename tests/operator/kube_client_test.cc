// KubeClient against a tiny in-repo HTTP server, for what a real apiserver
// cannot be made to do on demand: a watch event split across chunks (and
// TCP segments) mid-line, an in-stream 410, and error bodies.
#include "operator/kube/kube_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <thread>

#include <gtest/gtest.h>

#include "tests/support/loopback.h"

namespace hetermoe::op {
namespace {

using nlohmann::json;

// Serves one connection with `respond(fd, request)`, then closes.
class OneShotServer {
 public:
  explicit OneShotServer(std::function<void(int fd, const std::string& request)> respond) {
    fd_ = testing::ListenOnLoopback(1, &port_);
    thread_ = std::thread([this, respond] {
      int c = accept(fd_, nullptr, nullptr);
      std::string request;
      char buf[4096];
      while (request.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      respond(c, request);
      close(c);
    });
  }
  ~OneShotServer() {
    thread_.join();
    close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

 private:
  int fd_ = -1, port_ = 0;
  std::thread thread_;
};

void Send(int fd, const std::string& text) { send(fd, text.data(), text.size(), MSG_NOSIGNAL); }
std::string Chunk(const std::string& data) {
  char size[16];
  std::snprintf(size, sizeof size, "%zx\r\n", data.size());
  return size + data + "\r\n";
}

KubeClient Client(const std::string& url) {
  KubeConfig config;
  config.server = url;
  config.token = "t0ken";
  return KubeClient(config);
}

TEST(KubeClientWatch, EventSplitMidLineAcrossChunksArrivesWhole) {
  std::string seen_request;
  OneShotServer server([&](int fd, const std::string& request) {
    seen_request = request;
    Send(fd, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    Send(fd, Chunk(R"({"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"1"}}})" "\n"
                   R"({"type":"MODIFIED","obj)"));
    // A separate TCP segment for the rest of the line.
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    Send(fd, Chunk(R"(ect":{"metadata":{"name":"a","resourceVersion":"2"}}})" "\n" R"({"type":"BOOKMARK",)"));
    Send(fd, Chunk(R"("object":{"metadata":{"resourceVersion":"7"}}})" "\n"));
    Send(fd, Chunk(R"({"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}})" "\n"));
    Send(fd, "0\r\n\r\n");
  });
  KubeClient client = Client(server.url());
  std::vector<json> events;
  WatchOptions o;
  o.resource_version = "0";
  o.label_selector = "hetermoe.io/job-name";
  o.timeout_seconds = 5;
  client.Watch("/api/v1/pods", o, [&](const json& e) {
    events.push_back(e);
    return true;
  });
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[1]["type"], "MODIFIED");
  EXPECT_EQ(events[1]["object"]["metadata"]["resourceVersion"], "2");
  EXPECT_EQ(events[2]["type"], "BOOKMARK");
  EXPECT_EQ(events[3]["object"]["code"], 410);
  EXPECT_NE(seen_request.find("watch=true"), std::string::npos);
  EXPECT_NE(seen_request.find("allowWatchBookmarks=true"), std::string::npos);
  EXPECT_NE(seen_request.find("labelSelector=hetermoe.io%2Fjob-name"), std::string::npos);
  EXPECT_NE(seen_request.find("Bearer t0ken"), std::string::npos) << seen_request;
}

TEST(KubeClientWatch, GoneAsHttpStatusIsAnApiError) {
  OneShotServer server([](int fd, const std::string&) {
    std::string body = R"({"kind":"Status","code":410,"reason":"Expired","message":"too old resource version"})";
    Send(fd, "HTTP/1.1 410 Gone\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                 "\r\n\r\n" + body);
  });
  KubeClient client = Client(server.url());
  try {
    client.Watch("/api/v1/pods", WatchOptions{}, [](const json&) { return true; });
    FAIL() << "expected ApiError";
  } catch (const ApiError& e) {
    EXPECT_TRUE(e.Gone());
    EXPECT_EQ(e.reason(), "Expired");
    EXPECT_NE(std::string(e.what()).find("too old resource version"), std::string::npos);
  }
}

TEST(KubeClient, ErrorsCarryCodeAndReason) {
  OneShotServer server([](int fd, const std::string&) {
    std::string body = R"({"kind":"Status","code":409,"reason":"AlreadyExists","message":"pods \"x\" already exists"})";
    Send(fd, "HTTP/1.1 409 Conflict\r\nContent-Type: application/json\r\nContent-Length: " +
                 std::to_string(body.size()) + "\r\n\r\n" + body);
  });
  KubeClient client = Client(server.url());
  try {
    client.Create("/api/v1/namespaces/a/pods", {{"metadata", {{"name", "x"}}}});
    FAIL() << "expected ApiError";
  } catch (const ApiError& e) {
    EXPECT_TRUE(e.AlreadyExists());
    EXPECT_FALSE(e.Conflict());
    EXPECT_EQ(std::string(e.what()), "POST /api/v1/namespaces/a/pods: 409 AlreadyExists: pods \"x\" already exists");
  }
}

TEST(KubeClient, NoServerIsCodeZero) {
  // Nobody listens on a port just found free.
  KubeClient client = Client("http://127.0.0.1:" + std::to_string(testing::FreeLoopbackPort()));
  try {
    client.Get("/version");
    FAIL() << "expected ApiError";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.code(), 0);
  }
}

}  // namespace
}  // namespace hetermoe::op
