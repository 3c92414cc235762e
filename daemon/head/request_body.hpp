// What the head reads from a client's request body: only what routing and policy need (the
// model it names, whether it streams, and how many completion tokens it allows, which bounds
// what a rank may send back). The body itself goes to the engine unchanged, but
// for the documented model-name mapping (engine.served_model_name). Pure functions: the
// fuzzers drive them directly.
#pragma once

#include "core/api_error.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

namespace dpengine::head {

struct ModelNames {
    std::string model;   // engine.model: the name clients use; a request naming another gets 404
    std::string served;  // engine.served_model_name: the engine's own name (empty: the same)
};

struct RoutedBody {
    std::string body;  // what the engine gets
    bool stream = false;
    // The most completion tokens the answer may have: "max_tokens" (or
    // "max_completion_tokens", the larger when both) times the choices ("n", "best_of");
    // nothing when the body states no limit (the engine applies its own default).
    std::optional<uint64_t> token_limit;
};

// Checks that BODY is a JSON object (nesting at most 32 deep) whose "model", when present, is
// NAMES.model, and returns the body for the engine: the same bytes, or with "model"'s value
// replaced by NAMES.served.
std::variant<RoutedBody, openai::HttpError> route_body(std::string_view body, const ModelNames& names);

// The byte range [first, second) of the value of the top-level member KEY of OBJECT, a valid
// JSON object; {npos, npos} when it has none. Keys are compared as written (escapes are not
// decoded).
std::pair<size_t, size_t> member_value_span(std::string_view object, std::string_view key);

}  // namespace dpengine::head
