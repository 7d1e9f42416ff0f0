// ApiError: a failed apiserver call, with the HTTP code (0 = no answer:
// connection refused, TLS failure, timeout) and the Status reason
// (NotFound, AlreadyExists, Conflict, Expired, ...). The message is one line:
// "<METHOD> <path>: <code> <reason>: <message>".
#pragma once

#include <string>

#include "common/error.h"

namespace hetermoe::op {

class ApiError : public Error {
 public:
  ApiError(int code, std::string reason, const std::string& message)
      : Error(message), code_(code), reason_(std::move(reason)) {}
  int code() const { return code_; }
  const std::string& reason() const { return reason_; }
  bool NotFound() const { return code_ == 404; }
  bool AlreadyExists() const { return code_ == 409 && reason_ == "AlreadyExists"; }
  bool Conflict() const { return code_ == 409 && reason_ != "AlreadyExists"; }
  bool Gone() const { return code_ == 410; }

 private:
  int code_;
  std::string reason_;
};

}  // namespace hetermoe::op
