// The OpenAI-compatible formats as a native backend (synthetic, cuda) speaks them in the rank:
// parsing and validating a request body for an endpoint into a typed request, and rendering
// responses, stream chunks and the usage chunk. Pure functions: no I/O, so NativeEngine stays
// a thin adapter and the fuzzers can drive this directly.
//
// What a native backend cannot honour is refused with 400 and code "unsupported-parameter"
// (the table in openai.cpp, and dpengined.toml(5)), never silently dropped. The model name is
// the head's to check; responses name the engine's configured model.
#pragma once

#include "core/api_error.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace dpengine::openai {

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
    std::string model;  // the engine's configured model name, for the responses
    // Completions: one or more prompts (a list of strings); chat: one, the messages rendered
    // as "role: content\n" lines. Choice i of prompt p has index p * n + i.
    std::vector<std::string> prompts;
    uint32_t n = 1;  // choices per prompt, 1..max_choices
    bool stream = false;
    bool include_usage = false;  // stream_options.include_usage
    SamplingParams sampling;
};

struct Limits {
    std::string backend = "synthetic";  // names the backend in refusals
    std::string model;                  // the engine's configured model name
    uint32_t default_max_tokens = 16;
    uint32_t max_model_len = 8192;  // upper bound for max_tokens
    uint32_t max_choices = 16;      // upper bound for n
    uint32_t max_prompts = 256;     // upper bound for the prompts of one request
};

// Parses and validates a request body for the endpoint `path`. Unknown fields are ignored (as
// the OpenAI API does); known fields of the wrong type or out of range are errors naming the
// field, and so are fields the backend cannot honour (code "unsupported-parameter").
// Malformed JSON, a body that is not an object, and nesting deeper than 32 levels are errors
// too. /v1/embeddings is refused with 400 ("unsupported-endpoint"), any other path with 404.
std::variant<CompletionRequest, HttpError> parse_request(std::string_view path, std::string_view body,
                                                         const Limits& limits);

struct Choice {
    std::string text;
    std::string finish_reason;  // "stop" or "length"
};

struct Usage {
    uint64_t prompt_tokens = 0;
    uint64_t completion_tokens = 0;
};

// `id` is e.g. "cmpl-…" or "chatcmpl-…"; `created` is Unix seconds. choices[k] has index k.
std::string completion_response(const CompletionRequest& request, std::string_view id, int64_t created,
                                const std::vector<Choice>& choices, const Usage& usage);

// One SSE event "data: {...}\n\n" for choice `index`. For chat, `delta` goes into
// choices[].delta.content; `first` adds delta.role = "assistant". `finish_reason` empty
// means null.
std::string stream_chunk(const CompletionRequest& request, std::string_view id, int64_t created, uint32_t index,
                         std::string_view delta, std::string_view finish_reason, bool first);

// The final usage event of a stream (only when include_usage): choices is [].
std::string stream_usage_chunk(const CompletionRequest& request, std::string_view id, int64_t created,
                               const Usage& usage);

inline constexpr std::string_view stream_done = "data: [DONE]\n\n";

}  // namespace dpengine::openai
