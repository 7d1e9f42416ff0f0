#include "common/plugin.h"

#include <dlfcn.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <filesystem>
#include <vector>

namespace hetermoe {

Plugin LoadPlugin(const std::string& file_name, const char* env_var, const char* build_path) {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv(env_var); env && *env) candidates.push_back(env);
  char self[PATH_MAX] = {0};
  if (::readlink("/proc/self/exe", self, sizeof self - 1) > 0) {
    const auto dir = std::filesystem::path(self).parent_path();
    candidates.push_back((dir / file_name).string());
    candidates.push_back((dir / ".." / "lib" / file_name).string());
  }
  if (build_path && *build_path) candidates.push_back(build_path);
  Plugin p;
  for (const auto& c : candidates) {
    if (!std::filesystem::exists(c)) continue;
    p.found = true;
    p.handle = ::dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (p.handle) return p;
    p.why = c + ": " + ::dlerror();
  }
  if (p.why.empty())
    p.why = file_name + " not found (beside the program, in ../lib, at $" + env_var + " or where the build put it)";
  return p;
}

}  // namespace hetermoe
