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
constexpr uint32_t max_items = 1 << 20;

template <class T>
constexpr Type type_of();
template <> constexpr Type type_of<Hello>() { return Type::hello; }
template <> constexpr Type type_of<Config>() { return Type::config; }
template <> constexpr Type type_of<Refused>() { return Type::refused; }
template <> constexpr Type type_of<Ready>() { return Type::ready; }
template <> constexpr Type type_of<Add>() { return Type::add; }
template <> constexpr Type type_of<Abort>() { return Type::abort; }
template <> constexpr Type type_of<Outputs>() { return Type::outputs; }
template <> constexpr Type type_of<Heartbeat>() { return Type::heartbeat; }
template <> constexpr Type type_of<Shutdown>() { return Type::shutdown; }
template <> constexpr Type type_of<ErrorReply>() { return Type::error; }

// ---- encoding: one function per message body ----

void put(Writer& w, const Hello& m) {
    w.map(7);
    w.str("rank"); w.uint(m.rank);
    w.str("local_rank"); w.uint(m.local_rank);
    w.str("node"); w.str(m.node);
    w.str("incarnation"); w.uint(m.incarnation);
    w.str("build"); w.str(m.build);
    w.str("dp_size"); w.uint(m.dp_size);
    w.str("model"); w.str(m.model);
}

void put(Writer& w, const EngineConfig& m) {
    w.map(10);
    w.str("backend"); w.str(m.backend);
    w.str("model"); w.str(m.model);
    w.str("max_batch"); w.uint(m.max_batch);
    w.str("step_time_ms"); w.float64(m.step_time_ms);
    w.str("max_model_len"); w.uint(m.max_model_len);
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
}

void put(Writer& w, const Config& m) {
    w.map(7);
    w.str("dp_size"); w.uint(m.dp_size);
    w.str("rank"); w.uint(m.rank);
    w.str("epoch"); w.uint(m.epoch);
    w.str("group_kind"); w.str(m.group_kind);
    w.str("group_rendezvous"); w.str(m.group_rendezvous);
    w.str("heartbeat_interval"); w.float64(m.heartbeat_interval);
    w.str("engine"); put(w, m.engine);
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

void put(Writer& w, const Add& m) {
    w.map(7);
    w.str("id"); w.uint(m.id);
    w.str("prompt"); w.str(m.prompt);
    w.str("max_tokens"); w.uint(m.max_tokens);
    w.str("temperature"); w.float64(m.temperature);
    w.str("top_p"); w.float64(m.top_p);
    w.str("seed"); w.uint(m.seed);
    w.str("stop");
    w.array(static_cast<uint32_t>(m.stop.size()));
    for (const auto& s : m.stop) w.str(s);
}

void put(Writer& w, const Abort& m) {
    w.map(1);
    w.str("ids");
    w.array(static_cast<uint32_t>(m.ids.size()));
    for (uint64_t id : m.ids) w.uint(id);
}

// The hot path: items are arrays [id, text, new_tokens, finish, prompt_tokens].
void put(Writer& w, const Outputs& m) {
    w.map(3);
    w.str("items");
    w.array(static_cast<uint32_t>(m.items.size()));
    for (const auto& o : m.items) {
        w.array(5);
        w.uint(o.id);
        w.str(o.text);
        w.uint(o.new_tokens);
        w.str(o.finish);
        w.uint(o.prompt_tokens);
    }
    w.str("running"); w.uint(m.running);
    w.str("waiting"); w.uint(m.waiting);
}

void put(Writer& w, const Heartbeat& m) {
    w.map(3);
    w.str("progress"); w.uint(m.progress);
    w.str("running"); w.uint(m.running);
    w.str("waiting"); w.uint(m.waiting);
}

void put(Writer& w, const Shutdown&) { w.map(0); }

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

Add get_add(Reader& r) {
    Add m;
    std::optional<uint64_t> id;
    std::optional<uint32_t> max_tokens;
    read_fields(r, [&](std::string_view k) {
        if (k == "id") id = r.uint();
        else if (k == "prompt") m.prompt = r.str();
        else if (k == "max_tokens") max_tokens = u32(r);
        else if (k == "temperature") m.temperature = r.float64();
        else if (k == "top_p") m.top_p = r.float64();
        else if (k == "seed") m.seed = r.uint();
        else if (k == "stop") m.stop = string_list(r, max_stop_strings, "stop strings");
        else return false;
        return true;
    });
    m.id = required(id, "ADD", "id");
    m.max_tokens = required(max_tokens, "ADD", "max_tokens");
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
                if (fields < 5) throw DecodeError("OUTPUTS: item needs 5 fields");
                o.id = r.uint();
                o.text = r.str();
                o.new_tokens = u32(r);
                o.finish = r.str();
                o.prompt_tokens = u32(r);
                for (; fields > 5; --fields) r.skip();  // appended by a newer minor version
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
        case Type::add: return get_add(r);
        case Type::abort: return get_abort(r);
        case Type::outputs: return get_outputs(r);
        case Type::heartbeat: return get_heartbeat(r);
        case Type::shutdown: r.skip(); return Shutdown{};
        case Type::error: return get_code_message<ErrorReply>(r);
    }
    throw DecodeError("unreachable");
}

}  // namespace

const char* type_name(const Message& message) {
    static constexpr const char* names[] = {"HELLO",  "CONFIG",    "REFUSED",  "READY", "ADD",
                                            "ABORT",  "OUTPUTS",   "HEARTBEAT", "SHUTDOWN", "ERROR"};
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
        if (type < static_cast<uint8_t>(Type::hello) || type > static_cast<uint8_t>(Type::error)) {
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
