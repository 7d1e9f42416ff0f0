// Helpers shared by the io and common tests: ScratchDir, a fresh directory
// per test for the files a test writes, and ExpectError, which checks the
// library's error contract (one line, `<source>: <problem>`).
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "common/error.h"

namespace hetermoe::io::testing {

class ScratchDir {
 public:
  ScratchDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    // The pid keeps concurrent ctest processes apart.
    path_ = std::filesystem::path(::testing::TempDir()) /
            ("hetermoe_io_" + std::string(info->test_suite_name()) + "_" + info->name() + "_" +
             std::to_string(::getpid()));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() { std::filesystem::remove_all(path_); }

  std::string Path(const std::string& name) const { return (path_ / name).string(); }

  // Writes raw bytes to `name` and returns its path.
  std::string WriteFile(const std::string& name, const std::string& bytes) const {
    std::string path = Path(name);
    std::ofstream(path, std::ios::binary) << bytes;
    return path;
  }

  static std::string ReadFile(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  std::filesystem::path path_;
};

// Asserts that `f` throws hetermoe::Error whose message is one line, starts
// with `<source>: ` and contains `needle`.
template <typename F>
void ExpectError(F f, const std::string& source, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one containing: " << needle;
  } catch (const Error& e) {
    const std::string message = e.what();
    EXPECT_EQ(message.rfind(source + ": ", 0), 0u) << message;
    EXPECT_NE(message.find(needle), std::string::npos) << message;
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

}  // namespace hetermoe::io::testing
