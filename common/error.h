// Error: the exception types every part's libraries throw (common/: shared
// by the operator, the planner, the trainer and the kernels), and the exit
// statuses hetermoe-trainer turns them into.
//
// Libraries throw hetermoe::Error with a message that names the input (file,
// key, rank) and the problem, so that the program's edge can print it as one
// line and exit non-zero. Nothing below main() prints errors itself.
// RetryableError marks failures that a restart of the whole run can cure (a
// peer died or stalled, the rendezvous timed out); everything else is a
// problem with the input that a restart would only repeat.
#pragma once

#include <stdexcept>
#include <string>

namespace hetermoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

class RetryableError : public Error {
 public:
  using Error::Error;
};

// hetermoe-trainer's exit statuses (README, "Exit status"). Kubernetes'
// ExitCode convention reads 1-127 as permanent and 128-255 as retryable
// (signals are 128 + n): the operator restarts a job on kRetryable and on
// signals, and fails it at once on kPermanent and kUsage.
namespace exit_status {
inline constexpr int kOk = 0;
inline constexpr int kPermanent = 1;   // bad run file, data, checkpoint or plan
inline constexpr int kUsage = 2;       // bad command line
inline constexpr int kInternal = 3;    // a bug or the machine (out of memory, ...)
inline constexpr int kRetryable = 175; // a peer lost, the rendezvous timed out
}  // namespace exit_status

}  // namespace hetermoe
