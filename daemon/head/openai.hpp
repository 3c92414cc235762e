// The OpenAI-compatible request and response formats: parsing and validating request bodies
// into typed requests, and rendering responses, stream chunks and errors. Pure functions: no
// I/O, so the HTTP server stays a thin adapter and the fuzzers can drive this directly.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace dpengine::openai {

// An error response: the status code and the OpenAI error object.
struct HttpError {
    int status = 400;
    std::string type = "invalid_request_error";  // or "not_found_error", "server_error", ...
    std::string message;
    std::string param;  // the offending field, empty when none
    std::string code;   // a stable reason code, empty when none
};

enum class Endpoint { completions, chat_completions };

struct SamplingParams {
    uint32_t max_tokens = 16;
    double temperature = 1.0;
    double top_p = 1.0;
    std::optional<uint64_t> seed;
    std::vector<std::string> stop;  // at most 4, each non-empty
};

struct CompletionRequest {
    Endpoint endpoint = Endpoint::completions;
    std::string model;
    std::string prompt;  // chat: the messages rendered as "role: content\n" lines
    uint32_t n = 1;      // choices, 1..max_choices
    bool stream = false;
    bool include_usage = false;  // stream_options.include_usage
    SamplingParams sampling;
};

struct Limits {
    std::string model;                // the one model served; requests naming another get 404
    uint32_t default_max_tokens = 16;
    uint32_t max_model_len = 8192;    // upper bound for max_tokens
    uint32_t max_choices = 16;        // upper bound for n
};

// Parses and validates a request body for `endpoint`. Unknown fields are ignored (as the
// OpenAI API does); known fields of the wrong type or out of range are errors naming the
// field. Malformed JSON, a body that is not an object, and nesting deeper than 32 levels
// are errors too.
std::variant<CompletionRequest, HttpError> parse_request(Endpoint endpoint, std::string_view body,
                                                         const Limits& limits);

std::string error_body(const HttpError& error);  // {"error":{"message":...,"type":...,...}}

struct Choice {
    std::string text;
    std::string finish_reason;  // "stop" or "length"
};

struct Usage {
    uint64_t prompt_tokens = 0;
    uint64_t completion_tokens = 0;
};

// `id` is e.g. "cmpl-…" or "chatcmpl-…"; `created` is Unix seconds.
std::string completion_response(const CompletionRequest& request, std::string_view id,
                                 int64_t created, const std::vector<Choice>& choices,
                                 const Usage& usage);

// One SSE event "data: {...}\n\n" for choice `index`. For chat, `delta` goes into
// choices[].delta.content; `first` adds delta.role = "assistant". `finish_reason` empty
// means null.
std::string stream_chunk(const CompletionRequest& request, std::string_view id, int64_t created,
                         uint32_t index, std::string_view delta, std::string_view finish_reason,
                         bool first);

// The final usage event of a stream (only when include_usage): choices is [].
std::string stream_usage_chunk(const CompletionRequest& request, std::string_view id,
                               int64_t created, const Usage& usage);

// An error inside a stream, as an SSE event carrying the OpenAI error object.
std::string stream_error_event(const HttpError& error);

inline constexpr std::string_view stream_done = "data: [DONE]\n\n";

std::string models_response(std::string_view model, int64_t created);

}  // namespace dpengine::openai
