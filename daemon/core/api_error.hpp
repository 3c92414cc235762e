// The OpenAI-style error object, as both sides write it: the head for its own refusals (no
// ready rank, rank lost, timeout, bad HTTP), and native engines for requests they refuse.
#pragma once

#include <string>

namespace dpengine::openai {

// An error response: the status code and the OpenAI error object.
struct HttpError {
    int status = 400;
    std::string type = "invalid_request_error";  // or "not_found_error", "server_error", ...
    std::string message;
    std::string param;  // the offending field, empty when none
    std::string code;   // a stable reason code, empty when none
};

// {"error":{"message":...,"type":...,"param":...,"code":...}}; bytes of the message that are
// not UTF-8 (a client's model name, say) become U+FFFD, so the body is always valid JSON.
std::string error_body(const HttpError& error);

// An error inside a stream of server-sent events: one event carrying the error object.
std::string stream_error_event(const HttpError& error);

}  // namespace dpengine::openai
