// The pure parts of relaying an OpenAI-compatible server's answers, as the http backend does:
// cutting a text/event-stream body into whole events without changing a byte, the usage
// figure it counts tokens by, and the server's load as its GET /metrics (Prometheus text) or
// GET /slots (llama-server) shows it. No I/O, so the unit tests drive them with arbitrary
// splits and sample texts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dpengine::engine {

// The most bytes of one response piece the rank relays: a whole non-streamed body, or one
// event. Below daemon.max_message_bytes' default (16 MiB) with room for the OUTPUTS envelope,
// so that a piece always fits one message.
inline constexpr size_t max_piece_bytes = 15 << 20;

// True when a Content-Type value names text/event-stream (whatever its parameters and case).
bool is_event_stream(std::string_view content_type);

// A path the rank may put in a request line: an origin-form target ("/v1/...", with a query
// if any) of visible ASCII only, so that no header can be smuggled in after it.
bool valid_request_path(std::string_view path);

// Cuts a text/event-stream body at its event boundaries, by the WHATWG rules: lines end with
// LF, CRLF or CR, and an empty line ends an event. Each event comes out in the server's bytes,
// its final line end included; empty lines before an event's first line belong to that event,
// so nothing is lost or reordered. Input may be split anywhere, even inside a CRLF: an event
// that a CR ends is complete only once the next byte shows whether an LF belongs to it (or
// the stream ends), so its bytes are the same whatever the splits.
class SseSplitter {
public:
    explicit SseSplitter(size_t max_event_bytes = max_piece_bytes) : max_event_bytes_(max_event_bytes) {}

    // Appends each event BYTES complete to EVENTS. False when an event grows beyond
    // max_event_bytes (the stream is not one the rank can relay).
    bool feed(std::string_view bytes, std::vector<std::string>& events);
    // The stream ended: the bytes not returned as events yet (an event that a final CR ended,
    // or an unfinished one), which the relay sends last so that the client loses none.
    std::string finish();

private:
    size_t max_event_bytes_;
    std::string pending_;          // the bytes of the event being read
    bool has_content_ = false;     // pending_ has more than empty lines
    bool line_empty_ = true;       // nothing yet on the current line
    bool after_cr_ = false;        // the last byte was CR: a following LF belongs to it
    bool cr_ended_event_ = false;  // ... and that CR ended an event
};

// The data of one event as a client reads it: its "data" lines joined with LF.
std::string sse_event_data(std::string_view event);

// usage.completion_tokens of a completions or chat response, or of one chunk of its stream;
// nullopt where there is none (or the text is not JSON).
std::optional<uint32_t> usage_completion_tokens(std::string_view json);
// The same of one event of a stream (in its bytes, as SseSplitter gives it).
std::optional<uint32_t> event_completion_tokens(std::string_view event);

// The engine's own load figures, where its server shows them.
struct EngineFigures {
    std::optional<uint32_t> queued;        // requests waiting inside the engine
    std::optional<double> kv_cache_usage;  // share of the KV cache in use, 0..1
};

// GET /metrics in the Prometheus text format: vLLM's vllm:num_requests_waiting and
// vllm:gpu_cache_usage_perc or vllm:kv_cache_usage_perc, llama-server's
// llamacpp:requests_deferred and llamacpp:kv_cache_usage_ratio. Series of one name are summed
// (queued) or the largest taken (KV cache); a figure without a series stays unset.
EngineFigures parse_metrics(std::string_view text);

// llama-server's GET /slots: a JSON array of slots, busy ones with "is_processing": true (or,
// from older versions, a non-zero "state"). Each slot holds its share of the context, so the
// busy share stands for the KV cache in use.
struct SlotUse {
    uint32_t slots = 0;
    uint32_t busy = 0;
    double share() const { return slots ? static_cast<double>(busy) / slots : 0.0; }
};
std::optional<SlotUse> parse_slots(std::string_view json);

}  // namespace dpengine::engine
