// The informer's list/watch protocol against a scripted in-repo server:
// paging, resuming from the last resourceVersion (bookmarks included), and a
// relist with add/update/delete diffs after 410 Gone, both as an in-stream
// ERROR event and as the HTTP status.
#include "operator/machinery/informer.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "operator/machinery/work_queue.h"
#include "tests/support/loopback.h"

namespace hetermoe::op {
namespace {

using nlohmann::json;

// Answers each request with the next scripted response (status, body); a
// watch body is sent chunked and the connection closed. Records requests.
class ScriptedServer {
 public:
  using Reply = std::function<std::string(const std::string& request_line)>;
  explicit ScriptedServer(std::vector<Reply> replies) : replies_(std::move(replies)) {
    fd_ = testing::ListenOnLoopback(8, &port_);
    thread_ = std::thread([this] { Serve(); });
  }
  ~ScriptedServer() {
    stop_ = true;
    thread_.join();
    close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<std::string> requests() {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }

  static std::string Json(int status, const json& body) {
    std::string b = body.dump();
    return "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(b.size()) + "\r\nConnection: close\r\n\r\n" + b;
  }
  static std::string Watch(const std::vector<json>& events) {
    std::string out = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                      "Connection: close\r\n\r\n";
    for (const json& e : events) {
      std::string line = e.dump() + "\n";
      char size[16];
      std::snprintf(size, sizeof size, "%zx\r\n", line.size());
      out += size + line + "\r\n";
    }
    return out + "0\r\n\r\n";
  }

 private:
  void Serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, 50) != 1) continue;
      int c = accept(fd_, nullptr, nullptr);
      std::string request;
      char buf[4096];
      while (request.find("\r\n\r\n") == std::string::npos) {
        ssize_t n = recv(c, buf, sizeof buf, 0);
        if (n <= 0) break;
        request.append(buf, static_cast<size_t>(n));
      }
      std::string line = request.substr(0, request.find("\r\n"));
      size_t i;
      {
        std::lock_guard<std::mutex> lock(mu_);
        requests_.push_back(line);
        i = requests_.size() - 1;
      }
      // Past the script: a watch that stays open until the test ends.
      if (i >= replies_.size()) {
        std::string head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
        send(c, head.data(), head.size(), MSG_NOSIGNAL);
        while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      } else {
        std::string reply = replies_[i](line);
        send(c, reply.data(), reply.size(), MSG_NOSIGNAL);
      }
      close(c);
    }
  }

  std::vector<Reply> replies_;
  int fd_ = -1, port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<std::string> requests_;
  std::thread thread_;
};

json Pod(const std::string& name, const std::string& rv) {
  return {{"metadata", {{"name", name}, {"namespace", "ns"}, {"resourceVersion", rv}, {"managedFields", json::array()}}}};
}
json List(std::vector<json> items, const std::string& rv, const std::string& next = "") {
  json meta = {{"resourceVersion", rv}};
  if (!next.empty()) meta["continue"] = next;
  return {{"kind", "PodList"}, {"metadata", meta}, {"items", items}};
}

struct Recorder {
  std::mutex mu;
  std::vector<std::string> events;
  void operator()(const ObjectPtr& old, const ObjectPtr& now) {
    std::lock_guard<std::mutex> lock(mu);
    std::string name = (now ? now : old)->at("metadata")["name"];
    events.push_back((old ? (now ? "update " : "delete ") : "add ") + name);
  }
  std::vector<std::string> Take() {
    std::lock_guard<std::mutex> lock(mu);
    return events;
  }
};

bool WaitFor(const std::function<bool()>& check) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!check()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

KubeConfig Config(const std::string& url) {
  KubeConfig c;
  c.server = url;
  return c;
}

TEST(Informer, PagesResumesAndRelistsOnGone) {
  ScriptedServer server({
      // 1. list, two pages
      [](const std::string&) { return ScriptedServer::Json(200, List({Pod("a", "1")}, "10", "page2")); },
      [](const std::string&) { return ScriptedServer::Json(200, List({Pod("b", "2")}, "10")); },
      // 2. watch: a change, a bookmark, then the server ends the watch
      [](const std::string&) {
        return ScriptedServer::Watch({{{"type", "MODIFIED"}, {"object", Pod("a", "11")}},
                                      {{"type", "BOOKMARK"}, {"object", {{"metadata", {{"resourceVersion", "15"}}}}}}});
      },
      // 3. resumed watch gets an in-stream 410
      [](const std::string&) {
        return ScriptedServer::Watch(
            {{{"type", "ERROR"}, {"object", {{"kind", "Status"}, {"code", 410}, {"reason", "Expired"}}}}});
      },
      // 4. relist: b gone, c new, a unchanged
      [](const std::string&) { return ScriptedServer::Json(200, List({Pod("a", "11"), Pod("c", "20")}, "21")); },
      // 5. watch answered 410 as the HTTP status
      [](const std::string&) {
        return ScriptedServer::Json(410, {{"kind", "Status"}, {"code", 410}, {"reason", "Expired"}});
      },
      // 6. relist again: a changed meanwhile
      [](const std::string&) { return ScriptedServer::Json(200, List({Pod("a", "30"), Pod("c", "20")}, "31")); },
  });
  KubeClient client(Config(server.url()));
  Informer::Options o;
  o.resource = {"", "v1", "pods", true};
  o.page_size = 1;
  o.backoff_initial_seconds = 0.01;
  Informer informer(client, o);
  Recorder recorder;
  informer.AddHandler(std::ref(recorder));
  informer.Start();
  ASSERT_TRUE(informer.WaitForSync(10));
  ASSERT_TRUE(WaitFor([&] { return server.requests().size() >= 8; }));
  ASSERT_TRUE(WaitFor([&] { return recorder.Take().size() >= 6; }));
  informer.Stop();

  EXPECT_EQ(recorder.Take(), (std::vector<std::string>{"add a", "add b", "update a", "delete b", "add c", "update a"}))
      << "relists report differences only";
  auto requests = server.requests();
  EXPECT_NE(requests[0].find("limit=1"), std::string::npos);
  EXPECT_NE(requests[1].find("continue=page2"), std::string::npos);
  EXPECT_NE(requests[2].find("watch=true&resourceVersion=10"), std::string::npos) << requests[2];
  EXPECT_NE(requests[3].find("resourceVersion=15"), std::string::npos) << "resumed from the bookmark: " << requests[3];
  EXPECT_EQ(requests[4].find("watch=true"), std::string::npos) << "in-stream 410 -> relist: " << requests[4];
  EXPECT_NE(requests[5].find("resourceVersion=21"), std::string::npos) << requests[5];
  EXPECT_EQ(requests[6].find("watch=true"), std::string::npos) << "HTTP 410 -> relist: " << requests[6];
  EXPECT_EQ(informer.relists(), 3u);
  ASSERT_TRUE(informer.Get("ns/a"));
  EXPECT_EQ((*informer.Get("ns/a"))["metadata"]["resourceVersion"], "30");
  EXPECT_FALSE((*informer.Get("ns/a"))["metadata"].contains("managedFields")) << "trimmed";
  EXPECT_FALSE(informer.Get("ns/b"));
}

TEST(Informer, ReconnectsWithBackoffAfterADrop) {
  ScriptedServer server({
      [](const std::string&) { return ScriptedServer::Json(200, List({Pod("a", "1")}, "5")); },
      [](const std::string&) { return ScriptedServer::Json(500, {{"kind", "Status"}, {"code", 500}}); },
      [](const std::string&) { return std::string("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ty"); },
      [](const std::string&) { return ScriptedServer::Watch({{{"type", "ADDED"}, {"object", Pod("b", "6")}}}); },
  });
  KubeClient client(Config(server.url()));
  Informer::Options o;
  o.resource = {"", "v1", "pods", true};
  o.backoff_initial_seconds = 0.01;
  Informer informer(client, o);
  informer.Start();
  ASSERT_TRUE(WaitFor([&] { return informer.Get("ns/b") != nullptr; }));
  informer.Stop();
  auto requests = server.requests();
  for (size_t i = 1; i < 4; ++i)
    EXPECT_NE(requests[i].find("watch=true&resourceVersion=5"), std::string::npos) << "no relist for a drop: " << requests[i];
  EXPECT_EQ(informer.relists(), 1u);
}

}  // namespace
}  // namespace hetermoe::op
