// The wire protocol between the head and its engine ranks (man page: dpengine-protocol(7)).
// Every ZeroMQ message is one msgpack array [major, minor, type, epoch, body]; body is a map
// with short string keys, except where the man page says array for the hot path. Each
// message's fields are declared once, in wire_fields.hpp; that list drives encoding and
// decoding (typed and bounded) and the fuzz seeds.
#pragma once

#include "error.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace dpengine::wire {

// The protocol's version. Compatibility rule (decode() implements it):
//  - The major must be the same; a message of another major is refused ("version-mismatch").
//  - Any minor of the same major is accepted. A message of an older minor lacks the fields
//    added since: they take their defaults, which mean what the older peer meant. A message of
//    a newer minor may carry map fields and elements at the end of a positional array that
//    this side does not know: they are skipped.
//  - So a minor version may only add optional fields (never a required one: wire_fields.hpp
//    checks this at compile time), append elements to positional arrays, and add reason codes.
//    Anything else, a new message type included (a receiver refuses a type it does not know,
//    "unknown-type"), needs a new major version.
//  - Hence head and nodes of different minors of one major work together, as in a rolling
//    upgrade (tested one minor apart, both ways).
//
// Changelog (git history; dpengine-protocol(7) says the same):
//  2.1  HELLO: pid. NODE_STATUS: leaving. NODE_CONFIG activity rows: device, in_flight,
//       waiting, served (elements 7-10). ERROR code group-key-not-owned.
//  2.0  REQUEST (type 5) carries the endpoint and the client's body, replacing ADD (the
//       synthetic engine's prompt, max_tokens, temperature, top_p, seed, stop); OUTPUTS rows
//       are response pieces [id, status, content_type, data, done, tokens] instead of generated
//       text. CONFIG engine: default_max_tokens, health_interval, health_failures. HEARTBEAT:
//       engine_queued, kv_cache_usage, health_failures.
//  1.0  The first version: HELLO, CONFIG, REFUSED, READY, ADD, ABORT, OUTPUTS, HEARTBEAT,
//       SHUTDOWN, ERROR. Later additions were shipped without raising the minor, still
//       saying 1.0: the node link (types 11-14), the DP group (types 25-29; CONFIG sync,
//       sync_interval, group_timeout), CONFIG engine command, env, health_path,
//       ready_timeout, max_concurrency (http backend) and hidden_size, num_layers,
//       vocab_size, gpu_memory_fraction, gpus, gpu_sharing (cuda backend), NODE_CONFIG states
//       and activity, HEARTBEAT dummy_steps, wave, memory_used. 2.0 is a clean break from all
//       of them.
inline constexpr uint32_t protocol_major = 2;
inline constexpr uint32_t protocol_minor = 1;

// rank → head: the first message on a connection.
struct Hello {
    uint32_t rank = 0;
    uint32_t local_rank = 0;
    std::string node;
    uint64_t incarnation = 0;  // random per process start; a restarted rank has a new one
    uint32_t pid = 0;          // since 2.1: its process id on its node (0: not stated)
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
    std::string path;     // "/v1/completions", "/v1/chat/completions", "/v1/embeddings", ...
    std::string body;     // bytes (not necessarily valid UTF-8)
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
    uint32_t count = 0;  // ranks wanted (data_parallel.size_local)
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
    std::string head;  // the head's node name, for the node's status
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

// Who sends a message type.
enum class Direction : uint8_t { rank_to_head, head_to_rank, rank_and_head, node_to_head, head_to_node };

// A message type's name as a template argument.
template <size_t N>
struct TypeName {
    char text[N];
    constexpr TypeName(const char (&name)[N]) {
        for (size_t i = 0; i < N; ++i) text[i] = name[i];
    }
};

// One row of the type table: number, name, body struct, sender.
template <uint8_t Number, TypeName Name, class Body, Direction Sender>
struct MessageType {
    using body = Body;
    static constexpr uint8_t number = Number;
    static constexpr const char* name = Name.text;
    static constexpr Direction direction = Sender;
};

struct TypeInfo {
    uint8_t number;
    const char* name;
    Direction direction;
};

template <class... Rows>
struct TypeTable {
    using Message = std::variant<typename Rows::body...>;
    // In the order of Message's alternatives: info[message.index()].
    static constexpr TypeInfo info[sizeof...(Rows)] = {{Rows::number, Rows::name, Rows::direction}...};

    static constexpr bool numbers_distinct() {
        for (size_t i = 0; i < sizeof...(Rows); ++i)
            for (size_t j = i + 1; j < sizeof...(Rows); ++j)
                if (info[i].number == info[j].number) return false;
        return true;
    }
    static_assert(numbers_distinct(), "two message types with one number");
};

// Every message type, once. Numbers are grouped: 1-10 ranks, 11-19 the node link (a headless
// daemon, on the same socket as the ranks), 25-29 the DP group (lockstep mode).
using Types = TypeTable<MessageType<1, "HELLO", Hello, Direction::rank_to_head>,
                        MessageType<2, "CONFIG", Config, Direction::head_to_rank>,
                        MessageType<3, "REFUSED", Refused, Direction::head_to_rank>,
                        MessageType<4, "READY", Ready, Direction::rank_to_head>,
                        MessageType<5, "REQUEST", Request, Direction::head_to_rank>,
                        MessageType<6, "ABORT", Abort, Direction::head_to_rank>,
                        MessageType<7, "OUTPUTS", Outputs, Direction::rank_to_head>,
                        MessageType<8, "HEARTBEAT", Heartbeat, Direction::rank_and_head>,
                        MessageType<9, "SHUTDOWN", Shutdown, Direction::head_to_rank>,
                        MessageType<10, "ERROR", ErrorReply, Direction::rank_and_head>,
                        MessageType<11, "NODE_HELLO", NodeHello, Direction::node_to_head>,
                        MessageType<12, "NODE_CONFIG", NodeConfig, Direction::head_to_node>,
                        MessageType<13, "NODE_STATUS", NodeStatus, Direction::node_to_head>,
                        MessageType<14, "ASSIGN", Assign, Direction::head_to_node>,
                        MessageType<25, "GROUP_KV", GroupKv, Direction::rank_to_head>,
                        MessageType<26, "GROUP_VALUE", GroupValue, Direction::head_to_rank>,
                        MessageType<27, "GROUP_FORM", GroupForm, Direction::head_to_rank>,
                        MessageType<28, "START_WAVE", StartWave, Direction::rank_and_head>,
                        MessageType<29, "GROUP_STATE", GroupState, Direction::rank_to_head>>;

using Message = Types::Message;

// True for the node-link messages (NODE_HELLO ... ASSIGN).
bool is_node_link(const Message& message);

struct Envelope {
    uint64_t epoch = 0;
    Message message;
};

const char* type_name(const Message& message);

// The message as a peer of protocol 2.`minor` (at most protocol_minor) sends it: the header
// says that minor and the fields added after it are left out. Only the tests of the
// compatibility rule ask for an older minor.
std::string encode(const Message& message, uint64_t epoch = 0, uint32_t minor = protocol_minor);

// Errors carry a reason code: "malformed", "unknown-type" or "version-mismatch" (the message
// names both versions).
Result<Envelope> decode(std::string_view bytes);

}  // namespace dpengine::wire
