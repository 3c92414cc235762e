// The fields of every wire message, each declared once: its key (or position), its member,
// whether it is required, since which minor version it exists, and its bounds. wire.cpp's
// encoder and decoder and the fuzz seeds (tests/fuzz/seed_wire.cpp) are driven by these
// lists; map sizes are counted from them. dpengine-protocol(7) documents each field.
#pragma once

#include "wire.hpp"

#include <tuple>

namespace dpengine::wire::fields {

enum class Presence : uint8_t {
    required,  // decoding refuses a message without it; always sent
    sent,      // optional (absent: the default); always sent
    when_set,  // optional; sent only when not the default, so that a message without it is
               // the bytes of a peer that predates it
};

// How a string travels: text (msgpack str) or bytes that need not be UTF-8 (bin; a str is
// accepted too).
enum class Text : uint8_t { str, bin };

struct Options {
    Presence presence = Presence::sent;
    uint32_t since = 0;  // the minor version of protocol_major that added the field
    uint32_t max = 0;    // lists and maps: the most entries; 0: only the message size bounds them
    Text text = Text::str;
};

inline constexpr Options required{.presence = Presence::required};
inline constexpr Options when_set{.presence = Presence::when_set};
inline constexpr Options bytes{.text = Text::bin};

template <class S, class T>
struct Field {
    std::string_view key;  // the map key; in an array layout, the element's name in messages
    T S::*member;
    Options options;
};

template <class S, class T>
constexpr Field<S, T> field(std::string_view key, T S::*member, Options options = {}) {
    return {key, member, options};
}

// A struct travels as a map of its fields by key, or (OUTPUTS items and other rows, where
// size matters) as an array by position; a minor version appends elements to an array.
enum class Layout : uint8_t { map, array };

// Schema<S>::fields: S's fields in the order they are sent; Schema<S>::layout when not a map.
template <class S>
struct Schema;

template <class S>
constexpr Layout layout_of() {
    if constexpr (requires { Schema<S>::layout; }) return Schema<S>::layout;
    else return Layout::map;
}

// The rules a field list must keep (the compatibility rule in wire.hpp): a field a minor
// version added is optional; in an array, the required elements come first and every other
// element is always sent (a position cannot be left out).
template <class S>
constexpr bool follows_the_rules() {
    bool ok = true;
    bool optional_seen = false;
    std::apply(
        [&](const auto&... f) {
            ((ok = ok && !(f.options.presence == Presence::required && f.options.since > 0)), ...);
            if constexpr (layout_of<S>() == Layout::array) {
                ((ok = ok && f.options.presence != Presence::when_set &&
                      !(optional_seen && f.options.presence == Presence::required),
                  optional_seen = optional_seen || f.options.presence != Presence::required),
                 ...);
            }
        },
        Schema<S>::fields);
    return ok;
}

template <>
struct Schema<Hello> {
    static constexpr auto fields = std::tuple{
        field("rank", &Hello::rank, required),
        field("local_rank", &Hello::local_rank),
        field("node", &Hello::node),
        field("incarnation", &Hello::incarnation, required),
        field("pid", &Hello::pid, {.since = 1}),
        field("build", &Hello::build),
        field("dp_size", &Hello::dp_size),
        field("model", &Hello::model),
    };
};

// Bounds on lists inside one message, beyond the message size itself.
inline constexpr uint32_t max_command_words = 4096;
inline constexpr uint32_t max_env_entries = 4096;
inline constexpr uint32_t max_gpus = 1024;
inline constexpr uint32_t max_items = 1 << 20;
inline constexpr uint32_t max_group_members = 65536;

template <>
struct Schema<EngineConfig> {
    using E = EngineConfig;
    static constexpr auto fields = std::tuple{
        field("backend", &E::backend),
        field("model", &E::model),
        field("max_batch", &E::max_batch),
        field("step_time_ms", &E::step_time_ms),
        field("max_model_len", &E::max_model_len),
        field("default_max_tokens", &E::default_max_tokens),
        field("command", &E::command, {.max = max_command_words}),
        field("env", &E::env, {.max = max_env_entries}),
        field("health_path", &E::health_path),
        field("ready_timeout", &E::ready_timeout),
        field("max_concurrency", &E::max_concurrency),
        field("health_interval", &E::health_interval),
        field("health_failures", &E::health_failures),
        field("hidden_size", &E::hidden_size),
        field("num_layers", &E::num_layers),
        field("vocab_size", &E::vocab_size),
        field("gpu_memory_fraction", &E::gpu_memory_fraction),
        field("gpus", &E::gpus, {.max = max_gpus}),
        field("gpu_sharing", &E::gpu_sharing),
    };
};

template <>
struct Schema<Config> {
    static constexpr auto fields = std::tuple{
        field("dp_size", &Config::dp_size, required),
        field("rank", &Config::rank, required),
        field("epoch", &Config::epoch),
        field("group_kind", &Config::group_kind),
        field("group_rendezvous", &Config::group_rendezvous),
        field("heartbeat_interval", &Config::heartbeat_interval),
        field("engine", &Config::engine),
        field("sync", &Config::sync),
        field("sync_interval", &Config::sync_interval),
        field("group_timeout", &Config::group_timeout),
    };
};

// REFUSED and ERROR have the same fields.
template <class S>
struct CodeAndMessage {
    static constexpr auto fields = std::tuple{
        field("code", &S::code),
        field("message", &S::message),
    };
};
template <>
struct Schema<Refused> : CodeAndMessage<Refused> {};
template <>
struct Schema<ErrorReply> : CodeAndMessage<ErrorReply> {};

template <>
struct Schema<Ready> {
    static constexpr auto fields = std::tuple{
        field("max_batch", &Ready::max_batch),
        field("device", &Ready::device),
    };
};

template <>
struct Schema<Request> {
    static constexpr auto fields = std::tuple{
        field("id", &Request::id, required),
        field("path", &Request::path, required),
        field("body", &Request::body, bytes),
        field("stream", &Request::stream),
    };
};

template <>
struct Schema<Abort> {
    static constexpr auto fields = std::tuple{field("ids", &Abort::ids)};
};

template <>
struct Schema<Output> {
    static constexpr Layout layout = Layout::array;
    static constexpr auto fields = std::tuple{
        field("id", &Output::id, required),
        field("status", &Output::status, required),
        field("content_type", &Output::content_type, required),
        field("data", &Output::data, {.presence = Presence::required, .text = Text::bin}),
        field("done", &Output::done, required),
        field("tokens", &Output::tokens, required),
    };
};

template <>
struct Schema<Outputs> {
    static constexpr auto fields = std::tuple{
        field("items", &Outputs::items, {.max = max_items}),
        field("running", &Outputs::running),
        field("waiting", &Outputs::waiting),
    };
};

template <>
struct Schema<Heartbeat> {
    static constexpr auto fields = std::tuple{
        field("progress", &Heartbeat::progress),
        field("running", &Heartbeat::running),
        field("waiting", &Heartbeat::waiting),
        field("dummy_steps", &Heartbeat::dummy_steps, when_set),
        field("wave", &Heartbeat::wave, when_set),
        field("memory_used", &Heartbeat::memory_used, when_set),
        field("engine_queued", &Heartbeat::engine_queued, when_set),
        field("kv_cache_usage", &Heartbeat::kv_cache_usage, when_set),
        field("health_failures", &Heartbeat::health_failures, when_set),
    };
};

template <>
struct Schema<Shutdown> {
    static constexpr std::tuple<> fields{};
};

template <>
struct Schema<NodeHello> {
    static constexpr auto fields = std::tuple{
        field("node", &NodeHello::node, required),
        field("incarnation", &NodeHello::incarnation, required),
        field("build", &NodeHello::build),
        field("count", &NodeHello::count, required),
        field("start_rank", &NodeHello::start_rank, when_set),
        field("held_start", &NodeHello::held_start, when_set),
        field("held_count", &NodeHello::held_count, when_set),
        field("dp_size", &NodeHello::dp_size),
        field("model", &NodeHello::model),
    };
};

template <>
struct Schema<NodeRankActivity> {
    using A = NodeRankActivity;
    static constexpr Layout layout = Layout::array;
    static constexpr auto fields = std::tuple{
        field("group_kind", &A::group_kind, required),
        field("group_epoch", &A::group_epoch, required),
        field("wave", &A::wave, required),
        field("memory_used", &A::memory_used, required),
        field("steps_per_second", &A::steps_per_second, required),
        field("dummy_step_share", &A::dummy_step_share, required),
        field("device", &A::device, {.since = 1}),
        field("in_flight", &A::in_flight, {.since = 1}),
        field("waiting", &A::waiting, {.since = 1}),
        field("served", &A::served, {.since = 1}),
    };
};

template <>
struct Schema<NodeConfig> {
    static constexpr auto fields = std::tuple{
        field("dp_size", &NodeConfig::dp_size),
        field("start_rank", &NodeConfig::start_rank, required),
        field("count", &NodeConfig::count, required),
        field("epoch", &NodeConfig::epoch),
        field("head", &NodeConfig::head),
        field("states", &NodeConfig::states, {.max = max_node_ranks}),
        field("activity", &NodeConfig::activity, {.presence = Presence::when_set, .max = max_node_ranks}),
    };
};

template <>
struct Schema<NodeRankStatus> {
    static constexpr Layout layout = Layout::array;
    static constexpr auto fields = std::tuple{
        field("rank", &NodeRankStatus::rank, required),
        field("state", &NodeRankStatus::state, required),
        field("pid", &NodeRankStatus::pid, required),
        field("restarts", &NodeRankStatus::restarts, required),
        field("last_error", &NodeRankStatus::last_error, required),
    };
};

template <>
struct Schema<NodeStatus> {
    static constexpr auto fields = std::tuple{
        field("leaving", &NodeStatus::leaving, {.presence = Presence::when_set, .since = 1}),
        field("ranks", &NodeStatus::ranks, {.max = max_node_ranks}),
    };
};

template <>
struct Schema<Assign> {
    static constexpr auto fields = std::tuple{
        field("start_rank", &Assign::start_rank, required),
        field("count", &Assign::count, required),
        field("epoch", &Assign::epoch),
    };
};

template <>
struct Schema<GroupKv> {
    static constexpr auto fields = std::tuple{
        field("group_epoch", &GroupKv::group_epoch), field("key", &GroupKv::key, required),
        field("value", &GroupKv::value, when_set),  // absent: a look-up
    };
};

template <>
struct Schema<GroupValue> {
    static constexpr auto fields = std::tuple{
        field("group_epoch", &GroupValue::group_epoch),
        field("key", &GroupValue::key),
        field("found", &GroupValue::found),
        field("value", &GroupValue::value),
    };
};

template <>
struct Schema<GroupForm> {
    static constexpr auto fields = std::tuple{
        field("group_epoch", &GroupForm::group_epoch, required),
        field("kind", &GroupForm::kind),
        field("members", &GroupForm::members, {.max = max_group_members}),
        field("wave", &GroupForm::wave),
    };
};

template <>
struct Schema<StartWave> {
    static constexpr auto fields = std::tuple{field("wave", &StartWave::wave, required)};
};

template <>
struct Schema<GroupState> {
    static constexpr auto fields = std::tuple{
        field("group_epoch", &GroupState::group_epoch),
        field("kind", &GroupState::kind),
        field("state", &GroupState::state),
        field("wave", &GroupState::wave),
        field("steps", &GroupState::steps),
        field("dummy_steps", &GroupState::dummy_steps),
        field("steps_per_second", &GroupState::steps_per_second),
        field("error", &GroupState::error),
    };
};

}  // namespace dpengine::wire::fields
