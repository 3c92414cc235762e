#include "wire.hpp"

#include "msgpack.hpp"

#include <optional>

namespace dpengine::wire {
namespace {

using msgpack::DecodeError;
using msgpack::Reader;
using msgpack::Writer;

// Bounds on lists inside one message, beyond the message size itself.
constexpr uint32_t max_stop_strings = 16;
constexpr uint32_t max_command_words = 4096;
constexpr uint32_t max_env_entries = 4096;
constexpr uint32_t max_gpus = 1024;
constexpr uint32_t max_items = 1 << 20;

template <class T>
constexpr Type type_of();
template <> constexpr Type type_of<Hello>() { return Type::hello; }
template <> constexpr Type type_of<Config>() { return Type::config; }
template <> constexpr Type type_of<Refused>() { return Type::refused; }
template <> constexpr Type type_of<Ready>() { return Type::ready; }
template <> constexpr Type type_of<Request>() { return Type::request; }
template <> constexpr Type type_of<Abort>() { return Type::abort; }
template <> constexpr Type type_of<Outputs>() { return Type::outputs; }
template <> constexpr Type type_of<Heartbeat>() { return Type::heartbeat; }
template <> constexpr Type type_of<Shutdown>() { return Type::shutdown; }
template <> constexpr Type type_of<ErrorReply>() { return Type::error; }
template <> constexpr Type type_of<NodeHello>() { return Type::node_hello; }
template <> constexpr Type type_of<NodeConfig>() { return Type::node_config; }
template <> constexpr Type type_of<NodeStatus>() { return Type::node_status; }
template <> constexpr Type type_of<Assign>() { return Type::assign; }
template <> constexpr Type type_of<GroupKv>() { return Type::group_kv; }
template <> constexpr Type type_of<GroupValue>() { return Type::group_value; }
template <> constexpr Type type_of<GroupForm>() { return Type::group_form; }
template <> constexpr Type type_of<StartWave>() { return Type::start_wave; }
template <> constexpr Type type_of<GroupState>() { return Type::group_state; }

// Bounds on the DP group's messages.
constexpr uint32_t max_group_members = 65536;

// ---- encoding: one function per message body ----

void put(Writer& w, const Hello& m) {
    w.map(8);
    w.str("rank"); w.uint(m.rank);
    w.str("local_rank"); w.uint(m.local_rank);
    w.str("node"); w.str(m.node);
    w.str("incarnation"); w.uint(m.incarnation);
    w.str("pid"); w.uint(m.pid);
    w.str("build"); w.str(m.build);
    w.str("dp_size"); w.uint(m.dp_size);
    w.str("model"); w.str(m.model);
}

void put(Writer& w, const EngineConfig& m) {
    w.map(19);
    w.str("backend"); w.str(m.backend);
    w.str("model"); w.str(m.model);
    w.str("max_batch"); w.uint(m.max_batch);
    w.str("step_time_ms"); w.float64(m.step_time_ms);
    w.str("max_model_len"); w.uint(m.max_model_len);
    w.str("default_max_tokens"); w.uint(m.default_max_tokens);
    w.str("command");
    w.array(static_cast<uint32_t>(m.command.size()));
    for (const auto& word : m.command) w.str(word);
    w.str("env");
    w.map(static_cast<uint32_t>(m.env.size()));
    for (const auto& [name, value] : m.env) {
        w.str(name);
        w.str(value);
    }
    w.str("health_path"); w.str(m.health_path);
    w.str("ready_timeout"); w.float64(m.ready_timeout);
    w.str("max_concurrency"); w.uint(m.max_concurrency);
    w.str("health_interval"); w.float64(m.health_interval);
    w.str("health_failures"); w.uint(m.health_failures);
    w.str("hidden_size"); w.uint(m.hidden_size);
    w.str("num_layers"); w.uint(m.num_layers);
    w.str("vocab_size"); w.uint(m.vocab_size);
    w.str("gpu_memory_fraction"); w.float64(m.gpu_memory_fraction);
    w.str("gpus");
    w.array(static_cast<uint32_t>(m.gpus.size()));
    for (uint32_t gpu : m.gpus) w.uint(gpu);
    w.str("gpu_sharing"); w.boolean(m.gpu_sharing);
}

void put(Writer& w, const Config& m) {
    w.map(10);
    w.str("dp_size"); w.uint(m.dp_size);
    w.str("rank"); w.uint(m.rank);
    w.str("epoch"); w.uint(m.epoch);
    w.str("group_kind"); w.str(m.group_kind);
    w.str("group_rendezvous"); w.str(m.group_rendezvous);
    w.str("heartbeat_interval"); w.float64(m.heartbeat_interval);
    w.str("engine"); put(w, m.engine);
    w.str("sync"); w.str(m.sync);
    w.str("sync_interval"); w.uint(m.sync_interval);
    w.str("group_timeout"); w.float64(m.group_timeout);
}

void put(Writer& w, const Refused& m) {
    w.map(2);
    w.str("code"); w.str(m.code);
    w.str("message"); w.str(m.message);
}

void put(Writer& w, const ErrorReply& m) {
    w.map(2);
    w.str("code"); w.str(m.code);
    w.str("message"); w.str(m.message);
}

void put(Writer& w, const Ready& m) {
    w.map(2);
    w.str("max_batch"); w.uint(m.max_batch);
    w.str("device"); w.str(m.device);
}

void put(Writer& w, const Request& m) {
    w.map(4);
    w.str("id"); w.uint(m.id);
    w.str("path"); w.str(m.path);
    w.str("body"); w.bin(m.body);
    w.str("stream"); w.boolean(m.stream);
}

void put(Writer& w, const Abort& m) {
    w.map(1);
    w.str("ids");
    w.array(static_cast<uint32_t>(m.ids.size()));
    for (uint64_t id : m.ids) w.uint(id);
}

// The hot path: items are arrays [id, status, content_type, data, done, tokens].
void put(Writer& w, const Outputs& m) {
    w.map(3);
    w.str("items");
    w.array(static_cast<uint32_t>(m.items.size()));
    for (const auto& o : m.items) {
        w.array(6);
        w.uint(o.id);
        w.uint(o.status);
        w.str(o.content_type);
        w.bin(o.data);
        w.boolean(o.done);
        w.uint(o.tokens);
    }
    w.str("running"); w.uint(m.running);
    w.str("waiting"); w.uint(m.waiting);
}

void put(Writer& w, const Heartbeat& m) {
    w.map(3 + (m.dummy_steps ? 1 : 0) + (m.wave ? 1 : 0) + (m.memory_used ? 1 : 0) + (m.engine_queued ? 1 : 0) +
          (m.kv_cache_usage != 0 ? 1 : 0) + (m.health_failures ? 1 : 0));
    w.str("progress"); w.uint(m.progress);
    w.str("running"); w.uint(m.running);
    w.str("waiting"); w.uint(m.waiting);
    if (m.dummy_steps) { w.str("dummy_steps"); w.uint(m.dummy_steps); }
    if (m.wave) { w.str("wave"); w.uint(m.wave); }
    if (m.memory_used) { w.str("memory_used"); w.uint(m.memory_used); }
    if (m.engine_queued) { w.str("engine_queued"); w.uint(m.engine_queued); }
    if (m.kv_cache_usage != 0) { w.str("kv_cache_usage"); w.float64(m.kv_cache_usage); }
    if (m.health_failures) { w.str("health_failures"); w.uint(m.health_failures); }
}

void put(Writer& w, const Shutdown&) { w.map(0); }

void put(Writer& w, const NodeHello& m) {
    w.map(7 + (m.start_rank ? 1 : 0) + (m.held_start ? 2 : 0));
    w.str("node"); w.str(m.node);
    w.str("incarnation"); w.uint(m.incarnation);
    w.str("build"); w.str(m.build);
    w.str("count"); w.uint(m.count);
    if (m.start_rank) { w.str("start_rank"); w.uint(*m.start_rank); }
    if (m.held_start) {
        w.str("held_start"); w.uint(*m.held_start);
        w.str("held_count"); w.uint(m.held_count);
    }
    w.str("dp_size"); w.uint(m.dp_size);
    w.str("model"); w.str(m.model);
    w.str("v"); w.uint(1);  // the node link's own revision, for a later minor version
}

void put(Writer& w, const NodeConfig& m) {
    w.map(6 + (m.activity.empty() ? 0 : 1));
    w.str("dp_size"); w.uint(m.dp_size);
    w.str("start_rank"); w.uint(m.start_rank);
    w.str("count"); w.uint(m.count);
    w.str("epoch"); w.uint(m.epoch);
    w.str("head"); w.str(m.head);
    w.str("states");
    w.array(static_cast<uint32_t>(m.states.size()));
    for (const auto& state : m.states) w.str(state);
    if (m.activity.empty()) return;
    // Entries are arrays [group_kind, group_epoch, wave, memory_used, steps_per_second,
    // dummy_step_share, device, in_flight, waiting, served] (the last four since 2.1); a newer
    // minor version may append elements.
    w.str("activity");
    w.array(static_cast<uint32_t>(m.activity.size()));
    for (const auto& a : m.activity) {
        w.array(10);
        w.str(a.group_kind);
        w.uint(a.group_epoch);
        w.uint(a.wave);
        w.uint(a.memory_used);
        w.float64(a.steps_per_second);
        w.float64(a.dummy_step_share);
        w.str(a.device);
        w.uint(a.in_flight);
        w.uint(a.waiting);
        w.uint(a.served);
    }
}

// Ranks are arrays [rank, state, pid, restarts, last_error], like OUTPUTS items.
void put(Writer& w, const NodeStatus& m) {
    w.map(m.leaving ? 2 : 1);
    if (m.leaving) {
        w.str("leaving");
        w.boolean(true);
    }
    w.str("ranks");
    w.array(static_cast<uint32_t>(m.ranks.size()));
    for (const auto& r : m.ranks) {
        w.array(5);
        w.uint(r.rank);
        w.str(r.state);
        w.uint(r.pid);
        w.uint(r.restarts);
        w.str(r.last_error);
    }
}

void put(Writer& w, const Assign& m) {
    w.map(3);
    w.str("start_rank"); w.uint(m.start_rank);
    w.str("count"); w.uint(m.count);
    w.str("epoch"); w.uint(m.epoch);
}

void put(Writer& w, const GroupKv& m) {
    w.map(m.value ? 3 : 2);
    w.str("group_epoch"); w.uint(m.group_epoch);
    w.str("key"); w.str(m.key);
    if (m.value) {
        w.str("value"); w.str(*m.value);
    }
}

void put(Writer& w, const GroupValue& m) {
    w.map(4);
    w.str("group_epoch"); w.uint(m.group_epoch);
    w.str("key"); w.str(m.key);
    w.str("found"); w.boolean(m.found);
    w.str("value"); w.str(m.value);
}

void put(Writer& w, const GroupForm& m) {
    w.map(4);
    w.str("group_epoch"); w.uint(m.group_epoch);
    w.str("kind"); w.str(m.kind);
    w.str("members");
    w.array(static_cast<uint32_t>(m.members.size()));
    for (uint32_t r : m.members) w.uint(r);
    w.str("wave"); w.uint(m.wave);
}

void put(Writer& w, const StartWave& m) {
    w.map(1);
    w.str("wave"); w.uint(m.wave);
}

void put(Writer& w, const GroupState& m) {
    w.map(8);
    w.str("group_epoch"); w.uint(m.group_epoch);
    w.str("kind"); w.str(m.kind);
    w.str("state"); w.str(m.state);
    w.str("wave"); w.uint(m.wave);
    w.str("steps"); w.uint(m.steps);
    w.str("dummy_steps"); w.uint(m.dummy_steps);
    w.str("steps_per_second"); w.float64(m.steps_per_second);
    w.str("error"); w.str(m.error);
}

// ---- decoding ----

uint32_t u32(Reader& r) {
    uint64_t v = r.uint();
    if (v > UINT32_MAX) throw DecodeError("integer out of range");
    return static_cast<uint32_t>(v);
}

// Reads a map body, handing each key to `field`, which returns false for keys it does not
// know (they are skipped: a newer minor version may add fields).
template <class F>
void read_fields(Reader& r, F&& field) {
    for (uint32_t n = r.map(); n > 0; --n) {
        std::string_view key = r.str();
        if (!field(key)) r.skip();
    }
}

template <class T>
T required(const std::optional<T>& v, const char* message, const char* field) {
    if (!v) throw DecodeError(std::string(message) + ": missing field '" + field + "'");
    return *v;
}

std::vector<std::string> string_list(Reader& r, uint32_t max, const char* what) {
    uint32_t n = r.array();
    if (n > max) throw DecodeError(std::string("too many ") + what);
    std::vector<std::string> out;
    out.reserve(n);
    for (uint32_t i = 0; i < n; ++i) out.emplace_back(r.str());
    return out;
}

Hello get_hello(Reader& r) {
    Hello m;
    std::optional<uint32_t> rank;
    std::optional<uint64_t> incarnation;
    read_fields(r, [&](std::string_view k) {
        if (k == "rank") rank = u32(r);
        else if (k == "local_rank") m.local_rank = u32(r);
        else if (k == "node") m.node = r.str();
        else if (k == "incarnation") incarnation = r.uint();
        else if (k == "pid") m.pid = u32(r);
        else if (k == "build") m.build = r.str();
        else if (k == "dp_size") m.dp_size = u32(r);
        else if (k == "model") m.model = r.str();
        else return false;
        return true;
    });
    m.rank = required(rank, "HELLO", "rank");
    m.incarnation = required(incarnation, "HELLO", "incarnation");
    return m;
}

EngineConfig get_engine_config(Reader& r) {
    EngineConfig m;
    read_fields(r, [&](std::string_view k) {
        if (k == "backend") m.backend = r.str();
        else if (k == "model") m.model = r.str();
        else if (k == "max_batch") m.max_batch = u32(r);
        else if (k == "step_time_ms") m.step_time_ms = r.float64();
        else if (k == "max_model_len") m.max_model_len = u32(r);
        else if (k == "default_max_tokens") m.default_max_tokens = u32(r);
        else if (k == "command") m.command = string_list(r, max_command_words, "command words");
        else if (k == "env") {
            uint32_t n = r.map();
            if (n > max_env_entries) throw DecodeError("too many environment entries");
            m.env.reserve(n);
            for (uint32_t i = 0; i < n; ++i) {
                std::string name(r.str());
                m.env.emplace_back(std::move(name), std::string(r.str()));
            }
        }
        else if (k == "health_path") m.health_path = r.str();
        else if (k == "ready_timeout") m.ready_timeout = r.float64();
        else if (k == "max_concurrency") m.max_concurrency = u32(r);
        else if (k == "health_interval") m.health_interval = r.float64();
        else if (k == "health_failures") m.health_failures = u32(r);
        else if (k == "hidden_size") m.hidden_size = u32(r);
        else if (k == "num_layers") m.num_layers = u32(r);
        else if (k == "vocab_size") m.vocab_size = u32(r);
        else if (k == "gpu_memory_fraction") m.gpu_memory_fraction = r.float64();
        else if (k == "gpus") {
            uint32_t n = r.array();
            if (n > max_gpus) throw DecodeError("too many GPUs");
            m.gpus.reserve(n);
            for (uint32_t i = 0; i < n; ++i) m.gpus.push_back(u32(r));
        }
        else if (k == "gpu_sharing") m.gpu_sharing = r.boolean();
        else return false;
        return true;
    });
    return m;
}

Config get_config(Reader& r) {
    Config m;
    std::optional<uint32_t> dp_size, rank;
    read_fields(r, [&](std::string_view k) {
        if (k == "dp_size") dp_size = u32(r);
        else if (k == "rank") rank = u32(r);
        else if (k == "epoch") m.epoch = r.uint();
        else if (k == "group_kind") m.group_kind = r.str();
        else if (k == "group_rendezvous") m.group_rendezvous = r.str();
        else if (k == "heartbeat_interval") m.heartbeat_interval = r.float64();
        else if (k == "engine") m.engine = get_engine_config(r);
        else if (k == "sync") m.sync = r.str();
        else if (k == "sync_interval") m.sync_interval = u32(r);
        else if (k == "group_timeout") m.group_timeout = r.float64();
        else return false;
        return true;
    });
    m.dp_size = required(dp_size, "CONFIG", "dp_size");
    m.rank = required(rank, "CONFIG", "rank");
    return m;
}

template <class T>
T get_code_message(Reader& r) {
    T m;
    read_fields(r, [&](std::string_view k) {
        if (k == "code") m.code = r.str();
        else if (k == "message") m.message = r.str();
        else return false;
        return true;
    });
    return m;
}

Ready get_ready(Reader& r) {
    Ready m;
    read_fields(r, [&](std::string_view k) {
        if (k == "max_batch") m.max_batch = u32(r);
        else if (k == "device") m.device = r.str();
        else return false;
        return true;
    });
    return m;
}

Request get_request(Reader& r) {
    Request m;
    std::optional<uint64_t> id;
    std::optional<std::string_view> path;
    read_fields(r, [&](std::string_view k) {
        if (k == "id") id = r.uint();
        else if (k == "path") path = r.str();
        else if (k == "body") m.body = r.bin();
        else if (k == "stream") m.stream = r.boolean();
        else return false;
        return true;
    });
    m.id = required(id, "REQUEST", "id");
    m.path = required(path, "REQUEST", "path");
    if (m.path.empty() || m.path.front() != '/') throw DecodeError("REQUEST: path must start with '/'");
    return m;
}

Abort get_abort(Reader& r) {
    Abort m;
    read_fields(r, [&](std::string_view k) {
        if (k != "ids") return false;
        uint32_t n = r.array();
        m.ids.reserve(n);
        for (uint32_t i = 0; i < n; ++i) m.ids.push_back(r.uint());
        return true;
    });
    return m;
}

Outputs get_outputs(Reader& r) {
    Outputs m;
    read_fields(r, [&](std::string_view k) {
        if (k == "items") {
            uint32_t n = r.array();
            if (n > max_items) throw DecodeError("too many output items");
            m.items.resize(n);
            for (auto& o : m.items) {
                uint32_t fields = r.array();
                if (fields < 6) throw DecodeError("OUTPUTS: item needs 6 fields");
                o.id = r.uint();
                o.status = u32(r);
                if (o.status != 0 && (o.status < 100 || o.status > 599))
                    throw DecodeError("OUTPUTS: status " + std::to_string(o.status) + " is not an HTTP status");
                o.content_type = r.str();
                o.data = r.bin();
                o.done = r.boolean();
                o.tokens = u32(r);
                for (; fields > 6; --fields) r.skip();  // appended by a newer minor version
            }
        } else if (k == "running") m.running = u32(r);
        else if (k == "waiting") m.waiting = u32(r);
        else return false;
        return true;
    });
    return m;
}

Heartbeat get_heartbeat(Reader& r) {
    Heartbeat m;
    read_fields(r, [&](std::string_view k) {
        if (k == "progress") m.progress = r.uint();
        else if (k == "running") m.running = u32(r);
        else if (k == "waiting") m.waiting = u32(r);
        else if (k == "dummy_steps") m.dummy_steps = r.uint();
        else if (k == "wave") m.wave = r.uint();
        else if (k == "memory_used") m.memory_used = r.uint();
        else if (k == "engine_queued") m.engine_queued = u32(r);
        else if (k == "kv_cache_usage") {
            m.kv_cache_usage = r.float64();
            if (!(m.kv_cache_usage >= 0 && m.kv_cache_usage <= 1)) throw DecodeError("HEARTBEAT: kv_cache_usage must be within 0..1");
        }
        else if (k == "health_failures") m.health_failures = u32(r);
        else return false;
        return true;
    });
    return m;
}

// A rank block must lie within the largest DP size.
void check_block(uint64_t start, uint64_t count, const char* message) {
    if (count > max_node_ranks || start + count > max_node_ranks) {
        throw DecodeError(std::string(message) + ": rank block " + std::to_string(start) + "+" + std::to_string(count) +
                          " is beyond the largest DP size");
    }
}

NodeHello get_node_hello(Reader& r) {
    NodeHello m;
    std::optional<uint64_t> incarnation;
    std::optional<uint32_t> count;
    read_fields(r, [&](std::string_view k) {
        if (k == "node") m.node = r.str();
        else if (k == "incarnation") incarnation = r.uint();
        else if (k == "build") m.build = r.str();
        else if (k == "count") count = u32(r);
        else if (k == "start_rank") m.start_rank = u32(r);
        else if (k == "held_start") m.held_start = u32(r);
        else if (k == "held_count") m.held_count = u32(r);
        else if (k == "dp_size") m.dp_size = u32(r);
        else if (k == "model") m.model = r.str();
        else return false;
        return true;
    });
    if (m.node.empty()) throw DecodeError("NODE_HELLO: missing field 'node'");
    m.incarnation = required(incarnation, "NODE_HELLO", "incarnation");
    m.count = required(count, "NODE_HELLO", "count");
    check_block(m.start_rank.value_or(0), m.count, "NODE_HELLO");
    if (m.held_start) check_block(*m.held_start, m.held_count, "NODE_HELLO");
    return m;
}

NodeConfig get_node_config(Reader& r) {
    NodeConfig m;
    std::optional<uint32_t> start, count;
    read_fields(r, [&](std::string_view k) {
        if (k == "dp_size") m.dp_size = u32(r);
        else if (k == "start_rank") start = u32(r);
        else if (k == "count") count = u32(r);
        else if (k == "epoch") m.epoch = r.uint();
        else if (k == "head") m.head = r.str();
        else if (k == "states") {
            uint32_t n = r.array();
            if (n > max_node_ranks) throw DecodeError("NODE_CONFIG: too many states");
            m.states.reserve(n);
            for (uint32_t i = 0; i < n; ++i) m.states.emplace_back(r.str());
        } else if (k == "activity") {
            uint32_t n = r.array();
            if (n > max_node_ranks) throw DecodeError("NODE_CONFIG: too many activity entries");
            m.activity.reserve(n);
            for (uint32_t i = 0; i < n; ++i) {
                uint32_t fields = r.array();
                if (fields < 6) throw DecodeError("NODE_CONFIG: an activity entry needs 6 elements");
                NodeRankActivity& a = m.activity.emplace_back();
                a.group_kind = r.str();
                a.group_epoch = r.uint();
                a.wave = r.uint();
                a.memory_used = r.uint();
                a.steps_per_second = r.float64();
                a.dummy_step_share = r.float64();
                if (fields >= 10) {  // since 2.1: what the head routes to the rank
                    a.device = r.str();
                    a.in_flight = u32(r);
                    a.waiting = u32(r);
                    a.served = r.uint();
                    fields -= 4;
                }
                for (; fields > 6; --fields) r.skip();  // appended by a newer minor version
            }
        } else return false;
        return true;
    });
    m.start_rank = required(start, "NODE_CONFIG", "start_rank");
    m.count = required(count, "NODE_CONFIG", "count");
    check_block(m.start_rank, m.count, "NODE_CONFIG");
    return m;
}

NodeStatus get_node_status(Reader& r) {
    NodeStatus m;
    read_fields(r, [&](std::string_view k) {
        if (k == "leaving") {
            m.leaving = r.boolean();
            return true;
        }
        if (k != "ranks") return false;
        uint32_t n = r.array();
        if (n > max_node_ranks) throw DecodeError("NODE_STATUS: too many ranks");
        m.ranks.resize(n);
        for (auto& s : m.ranks) {
            uint32_t fields = r.array();
            if (fields < 5) throw DecodeError("NODE_STATUS: a rank needs 5 fields");
            s.rank = u32(r);
            s.state = r.str();
            s.pid = u32(r);
            s.restarts = r.uint();
            s.last_error = r.str();
            for (; fields > 5; --fields) r.skip();  // appended by a newer minor version
        }
        return true;
    });
    return m;
}

Assign get_assign(Reader& r) {
    Assign m;
    std::optional<uint32_t> start, count;
    read_fields(r, [&](std::string_view k) {
        if (k == "start_rank") start = u32(r);
        else if (k == "count") count = u32(r);
        else if (k == "epoch") m.epoch = r.uint();
        else return false;
        return true;
    });
    m.start_rank = required(start, "ASSIGN", "start_rank");
    m.count = required(count, "ASSIGN", "count");
    check_block(m.start_rank, m.count, "ASSIGN");
    return m;
}

GroupKv get_group_kv(Reader& r) {
    GroupKv m;
    std::optional<std::string> key;
    read_fields(r, [&](std::string_view k) {
        if (k == "group_epoch") m.group_epoch = r.uint();
        else if (k == "key") key = r.str();
        else if (k == "value") m.value = std::string(r.str());
        else return false;
        return true;
    });
    m.key = required(key, "GROUP_KV", "key");
    return m;
}

GroupValue get_group_value(Reader& r) {
    GroupValue m;
    read_fields(r, [&](std::string_view k) {
        if (k == "group_epoch") m.group_epoch = r.uint();
        else if (k == "key") m.key = r.str();
        else if (k == "found") m.found = r.boolean();
        else if (k == "value") m.value = r.str();
        else return false;
        return true;
    });
    return m;
}

GroupForm get_group_form(Reader& r) {
    GroupForm m;
    std::optional<uint64_t> epoch;
    read_fields(r, [&](std::string_view k) {
        if (k == "group_epoch") epoch = r.uint();
        else if (k == "kind") m.kind = r.str();
        else if (k == "members") {
            uint32_t n = r.array();
            if (n > max_group_members) throw DecodeError("GROUP_FORM: too many members");
            m.members.reserve(n);
            for (uint32_t i = 0; i < n; ++i) m.members.push_back(u32(r));
        } else if (k == "wave") m.wave = r.uint();
        else return false;
        return true;
    });
    m.group_epoch = required(epoch, "GROUP_FORM", "group_epoch");
    return m;
}

StartWave get_start_wave(Reader& r) {
    StartWave m;
    std::optional<uint64_t> wave;
    read_fields(r, [&](std::string_view k) {
        if (k == "wave") wave = r.uint();
        else return false;
        return true;
    });
    m.wave = required(wave, "START_WAVE", "wave");
    return m;
}

GroupState get_group_state(Reader& r) {
    GroupState m;
    read_fields(r, [&](std::string_view k) {
        if (k == "group_epoch") m.group_epoch = r.uint();
        else if (k == "kind") m.kind = r.str();
        else if (k == "state") m.state = r.str();
        else if (k == "wave") m.wave = r.uint();
        else if (k == "steps") m.steps = r.uint();
        else if (k == "dummy_steps") m.dummy_steps = r.uint();
        else if (k == "steps_per_second") m.steps_per_second = r.float64();
        else if (k == "error") m.error = r.str();
        else return false;
        return true;
    });
    return m;
}

Message get_body(Reader& r, uint64_t type) {
    switch (static_cast<Type>(type)) {
        case Type::hello: return get_hello(r);
        case Type::config: return get_config(r);
        case Type::refused: return get_code_message<Refused>(r);
        case Type::ready: return get_ready(r);
        case Type::request: return get_request(r);
        case Type::abort: return get_abort(r);
        case Type::outputs: return get_outputs(r);
        case Type::heartbeat: return get_heartbeat(r);
        case Type::shutdown: r.skip(); return Shutdown{};
        case Type::error: return get_code_message<ErrorReply>(r);
        case Type::node_hello: return get_node_hello(r);
        case Type::node_config: return get_node_config(r);
        case Type::node_status: return get_node_status(r);
        case Type::assign: return get_assign(r);
        case Type::group_kv: return get_group_kv(r);
        case Type::group_value: return get_group_value(r);
        case Type::group_form: return get_group_form(r);
        case Type::start_wave: return get_start_wave(r);
        case Type::group_state: return get_group_state(r);
    }
    throw DecodeError("unreachable");
}

}  // namespace

bool is_node_link(const Message& message) {
    return std::holds_alternative<NodeHello>(message) || std::holds_alternative<NodeConfig>(message) ||
           std::holds_alternative<NodeStatus>(message) || std::holds_alternative<Assign>(message);
}

const char* type_name(const Message& message) {
    static constexpr const char* names[] = {"HELLO",  "CONFIG",    "REFUSED",  "READY", "REQUEST",
                                            "ABORT",  "OUTPUTS",   "HEARTBEAT", "SHUTDOWN", "ERROR",
                                            "NODE_HELLO", "NODE_CONFIG", "NODE_STATUS", "ASSIGN",
                                            "GROUP_KV", "GROUP_VALUE", "GROUP_FORM", "START_WAVE", "GROUP_STATE"};
    return names[message.index()];
}

std::string encode(const Message& message, uint64_t epoch) {
    std::string out;
    Writer w(out);
    w.array(5);
    w.uint(protocol_major);
    w.uint(protocol_minor);
    std::visit(
        [&](const auto& m) {
            w.uint(static_cast<uint8_t>(type_of<std::decay_t<decltype(m)>>()));
            w.uint(epoch);
            put(w, m);
        },
        message);
    return out;
}

Result<Envelope> decode(std::string_view bytes) {
    try {
        Reader r(bytes);
        if (r.array() != 5) return Error{"message header needs exactly 5 fields", "malformed"};
        uint64_t major = r.uint();
        uint64_t minor = r.uint();
        if (major != protocol_major) {
            return Error{"protocol version " + std::to_string(major) + "." + std::to_string(minor) +
                             " is not supported; this side speaks " + std::to_string(protocol_major) +
                             "." + std::to_string(protocol_minor),
                         "version-mismatch"};
        }
        uint64_t type = r.uint();
        const bool rank_type = type >= static_cast<uint8_t>(Type::hello) && type <= static_cast<uint8_t>(Type::error);
        const bool node_type = type >= static_cast<uint8_t>(Type::node_hello) && type <= static_cast<uint8_t>(Type::assign);
        const bool dp_group_type = type >= static_cast<uint8_t>(Type::group_kv) && type <= static_cast<uint8_t>(Type::group_state);
        if (!rank_type && !node_type && !dp_group_type) {
            return Error{"unknown message type " + std::to_string(type), "unknown-type"};
        }
        Envelope env;
        env.epoch = r.uint();
        env.message = get_body(r, type);
        if (!r.at_end()) return Error{"trailing bytes after message", "malformed"};
        return env;
    } catch (const DecodeError& e) {
        return Error{e.what(), "malformed"};
    }
}

}  // namespace dpengine::wire
