// The wire protocol between the head and its engine ranks (man page: dpengine-protocol(7)).
// Every ZeroMQ message is one msgpack array [major, minor, type, epoch, body]; body is a map
// with short string keys (unknown keys are skipped, so a minor version can add fields), except
// where the man page says array for the hot path. Decoding is typed and bounded.
#pragma once

#include "error.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace dpengine::wire {

inline constexpr uint32_t protocol_major = 1;
inline constexpr uint32_t protocol_minor = 0;

enum class Type : uint8_t {
    hello = 1,
    config = 2,
    refused = 3,
    ready = 4,
    add = 5,
    abort = 6,
    outputs = 7,
    heartbeat = 8,
    shutdown = 9,
    error = 10,
};

// rank → head: the first message on a connection.
struct Hello {
    uint32_t rank = 0;
    uint32_t local_rank = 0;
    std::string node;
    uint64_t incarnation = 0;  // random per process start; a restarted rank has a new one
    std::string build;
    // Values this node states and the head must agree with; 0/empty: not stated.
    uint32_t dp_size = 0;
    std::string model;
};

// The engine settings that must be the same on every rank; only the head holds them.
struct EngineConfig {
    std::string backend;
    std::string model;
    uint32_t max_batch = 0;
    double step_time_ms = 0;
    uint32_t max_model_len = 0;
    // http backend (dpengined.toml(5) engine.command ...): the server every rank starts.
    std::vector<std::string> command;
    std::vector<std::pair<std::string, std::string>> env;
    std::string health_path;
    double ready_timeout = 0;
    uint32_t max_concurrency = 0;

    bool operator==(const EngineConfig&) const = default;
};

// head → rank: the answer to a valid HELLO.
struct Config {
    uint32_t dp_size = 0;
    uint32_t rank = 0;
    uint64_t epoch = 0;
    std::string group_kind = "none";  // the DP group: "none" in independent mode
    std::string group_rendezvous;
    double heartbeat_interval = 1.0;  // seconds between HEARTBEATs when idle
    EngineConfig engine;
};

// head → rank: the HELLO was not accepted; the rank must not retry (code says why).
struct Refused {
    std::string code;
    std::string message;
};

// rank → head: initialised and accepting requests.
struct Ready {
    uint32_t max_batch = 0;
    std::string device;
};

// head → rank: a new request.
struct Add {
    uint64_t id = 0;
    std::string prompt;
    uint32_t max_tokens = 0;
    double temperature = 1.0;
    double top_p = 1.0;
    uint64_t seed = 0;
    std::vector<std::string> stop;
};

// head → rank: stop working on these requests; no further output is sent for them.
struct Abort {
    std::vector<uint64_t> ids;
};

// One request's progress in one step.
struct Output {
    uint64_t id = 0;
    std::string text;         // the text the step added
    uint32_t new_tokens = 0;  // tokens the step added
    std::string finish;       // empty while running; "stop", "length" or "abort" at the end
    uint32_t prompt_tokens = 0;
};

// rank → head: one message per step with every request that made progress, plus load.
struct Outputs {
    std::vector<Output> items;
    uint32_t running = 0;
    uint32_t waiting = 0;
};

// rank → head when idle; proves the rank's loop is alive.
struct Heartbeat {
    uint64_t progress = 0;  // steps taken so far
    uint32_t running = 0;
    uint32_t waiting = 0;
};

// head → rank: exit now; the head has already answered what was in flight.
struct Shutdown {};

// Either side: the peer's message could not be used.
struct ErrorReply {
    std::string code;
    std::string message;
};

using Message = std::variant<Hello, Config, Refused, Ready, Add, Abort, Outputs, Heartbeat,
                             Shutdown, ErrorReply>;

struct Envelope {
    uint64_t epoch = 0;
    Message message;
};

const char* type_name(const Message& message);

std::string encode(const Message& message, uint64_t epoch = 0);

// Errors carry a reason code: "malformed", "unknown-type" or "version-mismatch" (the message
// names both versions).
Result<Envelope> decode(std::string_view bytes);

}  // namespace dpengine::wire
