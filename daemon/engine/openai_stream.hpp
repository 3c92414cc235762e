// The client side of an OpenAI-compatible server's streaming completions, as the http backend
// speaks it: the request body it sends, the server-sent events it reads back, and the
// completion chunks inside them. Pure functions and a byte-fed parser: no I/O, so the unit
// tests drive them with arbitrary splits.
#pragma once

#include "core/error.hpp"
#include "core/wire.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dpengine::engine {

// The JSON body of POST /v1/completions for REQUEST: streamed, with the usage in a last
// chunk. A zero seed is left out (the head sends 0 when the client gave none).
std::string completion_request_body(const wire::Add& request, std::string_view model);

// A text/event-stream decoder (the WHATWG rules that matter here): lines end with LF, CRLF or
// CR; "data:" lines of one event are joined with LF; an empty line ends the event; comments
// and other fields are skipped. Input may be split anywhere, even inside a CRLF.
class SseParser {
public:
    static constexpr size_t max_event_bytes = 16 << 20;

    // Appends the data of every event completed by BYTES to EVENTS. False when an event grows
    // beyond max_event_bytes (the stream is not one this parser can follow).
    bool feed(std::string_view bytes, std::vector<std::string>& events);
    // True when no partial line or event is pending (the stream may end here cleanly).
    bool idle() const { return line_.empty() && !has_data_; }

private:
    void end_line(std::vector<std::string>& events);

    std::string line_;
    std::string data_;
    bool has_data_ = false;
    bool after_cr_ = false;  // the last byte was CR: a following LF belongs to it
};

// One event of a completions stream.
struct CompletionChunk {
    std::string text;           // choices[0].text (empty when absent)
    std::string finish_reason;  // empty while the choice runs
    std::optional<uint32_t> prompt_tokens;      // from "usage", when the chunk has one
    std::optional<uint32_t> completion_tokens;
    std::string error;          // an {"error": ...} event's message; empty otherwise
};

inline constexpr std::string_view sse_done = "[DONE]";

// Parses the data of one event (other than "[DONE]"). Errors (code "bad-upstream") say what
// is wrong with the JSON.
Result<CompletionChunk> parse_completion_chunk(std::string_view data);

}  // namespace dpengine::engine
