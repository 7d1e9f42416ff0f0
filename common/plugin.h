// Finding and loading one of HeterMoE's plugins, the shared modules the
// trainer opens with dlopen only when a run needs them (the CUDA backend,
// the SentencePiece tokenizer; each says why it is one): at $<env_var>,
// beside the running executable, in its ../lib (an install), or at the path
// the build recorded.
#pragma once

#include <string>

namespace hetermoe {

struct Plugin {
  void* handle = nullptr;  // from dlopen (RTLD_NOW | RTLD_LOCAL); never closed
  bool found = false;      // some candidate file exists (then `why` is its dlopen error)
  std::string why;         // when null: why
};

// build_path may be null or empty.
Plugin LoadPlugin(const std::string& file_name, const char* env_var, const char* build_path);

}  // namespace hetermoe
