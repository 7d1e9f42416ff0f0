// Error: the one exception type the trainer's libraries throw.
//
// Libraries throw hetermoe::Error with a message that names the input (file,
// key, rank) and the problem, so that the program's edge can print it as one
// line and exit non-zero. Nothing below main() prints errors itself.
#pragma once

#include <stdexcept>
#include <string>

namespace hetermoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace hetermoe
