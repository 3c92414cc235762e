// The wire protocol between the head and its engine ranks (man page: dpengine-protocol(7)).
// Every ZeroMQ message is one msgpack array [major, minor, type, epoch, body]; body is a map
// with short string keys (unknown keys are skipped, so a minor version can add fields), except
// where the man page says array for the hot path. Decoding is typed and bounded.
#pragma once

#include "error.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace dpengine::wire {

// Major 2: requests and responses are the client's OpenAI bodies (REQUEST, OUTPUTS items of
// status, content type and body bytes), answered by the rank's engine; major 1 carried the
// synthetic engine's fields (prompt, max_tokens, ...) and the head formatted the answer.
inline constexpr uint32_t protocol_major = 2;
inline constexpr uint32_t protocol_minor = 1;  // 2.1: NODE_STATUS's leaving, HELLO's pid

enum class Type : uint8_t {
    hello = 1,
    config = 2,
    refused = 3,
    ready = 4,
    request = 5,
    abort = 6,
    outputs = 7,
    heartbeat = 8,
    shutdown = 9,
    error = 10,
    // The node link (a headless daemon ↔ the head), on the same socket as the ranks.
    node_hello = 11,
    node_config = 12,
    node_status = 13,
    assign = 14,
    // The DP group (lockstep mode): rendezvous through the head, group formation and waves.
    group_kv = 25,
    group_value = 26,
    group_form = 27,
    start_wave = 28,
    group_state = 29,
};

// rank → head: the first message on a connection.
struct Hello {
    uint32_t rank = 0;
    uint32_t local_rank = 0;
    std::string node;
    uint64_t incarnation = 0;  // random per process start; a restarted rank has a new one
    uint32_t pid = 0;          // its process id on its node (0: not stated)
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
    uint32_t default_max_tokens = 0;  // native backends: max_tokens when a request has none
    // http backend (dpengined.toml(5) engine.command ...): the server every rank starts.
    std::vector<std::string> command;
    std::vector<std::pair<std::string, std::string>> env;
    std::string health_path;
    double ready_timeout = 0;
    uint32_t max_concurrency = 0;
    double health_interval = 0;
    uint32_t health_failures = 0;
    // cuda backend (dpengined.toml(5) engine.hidden_size ...): model shape and GPU placement.
    uint32_t hidden_size = 0;
    uint32_t num_layers = 0;
    uint32_t vocab_size = 0;
    double gpu_memory_fraction = 0;
    std::vector<uint32_t> gpus;
    bool gpu_sharing = false;

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
    // How the ranks keep in step: "independent" (no group) or "lockstep" (every rank steps
    // while any has work; the group's all-reduce decides every sync_interval steps).
    std::string sync = "independent";
    uint32_t sync_interval = 1;
    double group_timeout = 0;  // seconds a collective or the rendezvous may take; 0: the rank's default
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

// head → rank: a new request: the endpoint and the client's JSON body, unchanged but for a
// mapped "model". The engine answers it the way an OpenAI-compatible server does.
struct Request {
    uint64_t id = 0;
    std::string path;   // "/v1/completions", "/v1/chat/completions", "/v1/embeddings", ...
    std::string body;   // bytes (not necessarily valid UTF-8)
    bool stream = false;  // the body asks for server-sent events (the head read "stream")
};

// head → rank: stop working on these requests; no further output is sent for them.
struct Abort {
    std::vector<uint64_t> ids;
};

// One piece of a request's response. The first piece has the HTTP status and content type;
// a streamed response then sends its server-sent events whole, one or more per piece, in the
// engine's bytes; the last piece has `done`.
struct Output {
    uint64_t id = 0;
    uint32_t status = 0;       // first piece: the HTTP status; 0 in later pieces
    std::string content_type;  // first piece: e.g. "application/json", "text/event-stream"
    std::string data;          // body bytes
    bool done = false;         // the response is complete
    uint32_t tokens = 0;       // completion tokens the piece carries, where the engine counts them
};

// rank → head: one message per step (or per batch of upstream reads) with every request that
// made progress, plus load.
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
    // Optional map fields (absent: 0; sent only when not 0, so a heartbeat without them is
    // the same bytes as from a rank that predates them). The head derives steps per second
    // and the dummy-step share from progress and dummy_steps over a few heartbeats.
    uint64_t dummy_steps = 0;  // lockstep: steps taken on a dummy batch so far
    uint64_t wave = 0;         // lockstep: the wave running, or the next one while paused
    uint64_t memory_used = 0;  // bytes of device memory the engine holds; 0: not measured
    // The engine's own figures where it reports them (http backend: the server's /metrics or
    // /slots): requests queued inside the engine, and the share of its KV cache in use (0..1).
    uint32_t engine_queued = 0;
    double kv_cache_usage = 0;
    // Health probes of the engine's server failed in a row (0: healthy). From the first one
    // the head routes nothing new to the rank.
    uint32_t health_failures = 0;
};

// head → rank: exit now; the head has already answered what was in flight.
struct Shutdown {};

// Either side: the peer's message could not be used.
struct ErrorReply {
    std::string code;
    std::string message;
};

// ---- the node link: a headless daemon registers with the head and reports its ranks ----

// The most ranks one node may ask for or report (the largest DP size).
inline constexpr uint32_t max_node_ranks = 65536;

// node → head: the first message of a node link (and again after the head forgot it).
struct NodeHello {
    std::string node;
    uint64_t incarnation = 0;  // random per daemon start
    std::string build;
    uint32_t count = 0;        // ranks wanted (data_parallel.size_local)
    // data_parallel.start_rank when configured: the node runs exactly these ranks. Unset: the
    // head assigns a block.
    std::optional<uint32_t> start_rank;
    // The block the node runs now (a head that restarted hands it back when it is free).
    std::optional<uint32_t> held_start;
    uint32_t held_count = 0;
    uint32_t dp_size = 0;  // 0: not stated
    std::string model;
};

// The head's view of one rank's DP group and engine activity (NODE_CONFIG's activity), as
// org.dpengine1.Rank shows it.
struct NodeRankActivity {
    std::string group_kind;  // "none" without a DP group
    uint64_t group_epoch = 0;
    uint64_t wave = 0;
    uint64_t memory_used = 0;
    double steps_per_second = 0;
    double dummy_step_share = 0;
    // Since 2.1: the rank's device and what the head routes to it (a 2.0 head sends none).
    std::string device;
    uint32_t in_flight = 0;
    uint32_t waiting = 0;
    uint64_t served = 0;

    bool operator==(const NodeRankActivity&) const = default;
};

// head → node: the answer to NODE_HELLO, and to every NODE_STATUS (the head's current view).
struct NodeConfig {
    uint32_t dp_size = 0;
    uint32_t start_rank = 0;
    uint32_t count = 0;  // 0: no ranks assigned (yet)
    uint64_t epoch = 0;
    std::string head;    // the head's node name, for the node's status
    // The protocol state of each rank of the block as the head sees it ("ready", ...), in
    // rank order; empty from a head that does not send it.
    std::vector<std::string> states;
    // Each rank's DP group and activity as the head sees it, in rank order like states;
    // empty from a head that does not send it.
    std::vector<NodeRankActivity> activity;
};

// One of a node's ranks, as the node sees its process.
struct NodeRankStatus {
    uint32_t rank = 0;
    std::string state;  // "running", "stopped", "restarting", "failed"
    uint32_t pid = 0;
    uint64_t restarts = 0;
    std::string last_error;
};

// node → head: its ranks' processes; sent periodically (it doubles as the link's heartbeat).
struct NodeStatus {
    std::vector<NodeRankStatus> ranks;
    // The node stops in order (its goodbye): its ranks stop with it and nothing more comes
    // from it. Sent only when true, so other statuses are the bytes of protocol 2.0.
    bool leaving = false;
};

// head → node: run exactly ranks start_rank .. start_rank + count - 1 from now on.
struct Assign {
    uint32_t start_rank = 0;
    uint32_t count = 0;
    uint64_t epoch = 0;
};

// rank → head: the DP group's rendezvous store, one key space per group epoch. With `value`
// the key is stored (set once; a second set of the same key is refused); without, the head
// answers GROUP_VALUE.
struct GroupKv {
    uint64_t group_epoch = 0;
    std::string key;
    std::optional<std::string> value;
};

// head → rank: the answer to a GROUP_KV without value.
struct GroupValue {
    uint64_t group_epoch = 0;
    std::string key;
    bool found = false;
    std::string value;
};

// head → rank: form (or re-form) the DP group of these ranks at this epoch; the rank's index
// in the group is its position in `members`. The new group starts in wave `wave`, running.
struct GroupForm {
    uint64_t group_epoch = 0;
    std::string kind;  // "gloo"
    std::vector<uint32_t> members;
    uint64_t wave = 0;
};

// head → rank: run wave `wave` (once the waves before it are done). rank → head: this rank has
// work while the group is paused; start wave `wave` on every rank.
struct StartWave {
    uint64_t wave = 0;
};

// rank → head: the rank's DP group, on every change and with every heartbeat interval.
struct GroupState {
    uint64_t group_epoch = 0;
    std::string kind;
    std::string state;  // "forming", "running", "paused" or "failed"
    uint64_t wave = 0;  // the wave running, or the next one while paused
    uint64_t steps = 0;
    uint64_t dummy_steps = 0;
    double steps_per_second = 0;
    std::string error;  // why the group failed
};

// The alternatives in the order of their type numbers (type_name() relies on it).
using Message = std::variant<Hello, Config, Refused, Ready, Request, Abort, Outputs, Heartbeat, Shutdown, ErrorReply,
                             NodeHello, NodeConfig, NodeStatus, Assign,
                             GroupKv, GroupValue, GroupForm, StartWave, GroupState>;

// True for the node-link messages (NODE_HELLO ... ASSIGN).
bool is_node_link(const Message& message);

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
