// Errors as values. Every failure a user can meet carries a message that names what went
// wrong and, where one exists, the fix. Exceptions are used inside a module only and are
// turned into these values at its edge.
#pragma once

#include "core/reason.hpp"

#include <string>
#include <utility>
#include <variant>

namespace dpengine {

struct Error {
    Error(std::string message) : message(std::move(message)) {}
    Error(std::string message, ReasonCode code) : message(std::move(message)), code(code) {}

    std::string message;
    std::string code;  // a reason code from core/reason.hpp for logs and metrics, or "" for none

    // The code's entry in the table; "failed" for an error that names none.
    Reason reason() const { return reason_from_code(code).value_or(Reason::failed); }
};

template <class T>
class [[nodiscard]] Result {
public:
    Result(T value) : v_(std::move(value)) {}
    Result(Error error) : v_(std::move(error)) {}

    bool ok() const { return v_.index() == 0; }
    explicit operator bool() const { return ok(); }
    T& value() & { return std::get<0>(v_); }
    T&& value() && { return std::get<0>(std::move(v_)); }
    const T& value() const& { return std::get<0>(v_); }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const Error& error() const { return std::get<1>(v_); }

private:
    std::variant<T, Error> v_;
};

// For operations that produce nothing but can fail.
struct Ok {};
using Status = Result<Ok>;

}  // namespace dpengine
