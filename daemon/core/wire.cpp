#include "wire.hpp"

#include "msgpack.hpp"
#include "wire_fields.hpp"

#include <optional>
#include <tuple>
#include <type_traits>

namespace dpengine::wire {
namespace {

using fields::Layout;
using fields::Options;
using fields::Presence;
using fields::Schema;
using fields::Text;
using msgpack::DecodeError;
using msgpack::Reader;
using msgpack::Writer;

template <class T>
constexpr bool is_optional = false;
template <class T>
constexpr bool is_optional<std::optional<T>> = true;

template <class T>
constexpr bool is_list = false;
template <class T>
constexpr bool is_list<std::vector<T>> = true;

// environment variables: a map of str to str
using PairList = std::vector<std::pair<std::string, std::string>>;

template <class T>
constexpr bool described = requires {
    Schema<T>::fields;
};

template <class... T>
constexpr bool all_follow_the_rules(std::variant<T...>*) {
    return (fields::follows_the_rules<T>() && ...);
}
static_assert(all_follow_the_rules(static_cast<Message*>(nullptr)) && fields::follows_the_rules<EngineConfig>() &&
                  fields::follows_the_rules<Output>() && fields::follows_the_rules<NodeRankActivity>() &&
                  fields::follows_the_rules<NodeRankStatus>(),
              "a field list breaks the compatibility rule (wire.hpp)");

// ---- encoding ----

template <class S>
void put_struct(Writer& w, const S& s, uint32_t minor);

template <class T>
void put_value(Writer& w, const T& v, const Options& o, uint32_t minor) {
    if constexpr (std::is_same_v<T, bool>) w.boolean(v);
    else if constexpr (std::is_unsigned_v<T>) w.uint(v);
    else if constexpr (std::is_same_v<T, double>) w.float64(v);
    else if constexpr (std::is_same_v<T, std::string>) o.text == Text::bin ? w.bin(v) : w.str(v);
    else if constexpr (is_optional<T>) put_value(w, *v, o, minor);
    else if constexpr (std::is_same_v<T, PairList>) {
        w.map(static_cast<uint32_t>(v.size()));
        for (const auto& [name, value] : v) {
            w.str(name);
            w.str(value);
        }
    } else if constexpr (is_list<T>) {
        w.array(static_cast<uint32_t>(v.size()));
        for (const auto& element : v) put_value(w, element, o, minor);
    } else {
        put_struct(w, v, minor);
    }
}

template <class T>
bool is_default(const T& v) {
    if constexpr (is_list<T>) return v.empty();
    else if constexpr (requires { v == T{}; }) return v == T{};
    else return false;  // a nested struct is always sent
}

// Whether a peer of `minor` sends the field of `s`.
template <class S, class F>
bool sent(const F& f, const S& s, uint32_t minor) {
    if (f.options.since > minor) return false;
    return f.options.presence != Presence::when_set || !is_default(s.*f.member);
}

template <class S>
void put_struct(Writer& w, const S& s, uint32_t minor) {
    std::apply(
        [&](const auto&... f) {
            const uint32_t count = (static_cast<uint32_t>(sent(f, s, minor)) + ... + 0u);
            if constexpr (fields::layout_of<S>() == Layout::array) {
                w.array(count);
            } else {
                w.map(count);
            }
            [[maybe_unused]] auto put = [&](const auto& field) {
                if (!sent(field, s, minor)) return;
                if constexpr (fields::layout_of<S>() == Layout::map) w.str(field.key);
                put_value(w, s.*field.member, field.options, minor);
            };
            (put(f), ...);
        },
        Schema<S>::fields);
}

// ---- decoding ----

// A decoding error inside a field, with the path to it ("engine.gpus", "items[3].status"),
// which grows as it unwinds through the fields around it.
struct FieldError {
    std::string path;
    std::string message;
};

// Runs `read` for the part of the message at `segment`, locating any error there.
template <class F>
void at(std::string_view segment, F&& read) {
    try {
        read();
    } catch (FieldError& e) {
        const bool index = !e.path.empty() && e.path.front() == '[';
        e.path = std::string(segment) + (index ? "" : ".") + e.path;
        throw;
    } catch (const DecodeError& e) {
        throw FieldError{std::string(segment), e.what()};
    }
}

uint32_t u32(Reader& r) {
    uint64_t v = r.uint();
    if (v > UINT32_MAX) throw DecodeError(std::to_string(v) + " does not fit in 32 bits");
    return static_cast<uint32_t>(v);
}

uint32_t bounded(uint32_t n, const Options& o) {
    if (o.max != 0 && n > o.max) {
        throw DecodeError("too many entries: " + std::to_string(n) + ", at most " + std::to_string(o.max));
    }
    return n;
}

template <class S>
void get_struct(Reader& r, S& s);

template <class T>
void get_value(Reader& r, T& v, const Options& o) {
    if constexpr (std::is_same_v<T, bool>) v = r.boolean();
    else if constexpr (std::is_same_v<T, uint32_t>) v = u32(r);
    else if constexpr (std::is_same_v<T, uint64_t>) v = r.uint();
    else if constexpr (std::is_same_v<T, double>) v = r.float64();
    else if constexpr (std::is_same_v<T, std::string>) v = o.text == Text::bin ? r.bin() : r.str();
    else if constexpr (is_optional<T>) get_value(r, v.emplace(), o);
    else if constexpr (std::is_same_v<T, PairList>) {
        const uint32_t n = bounded(r.map(), o);
        v.clear();
        v.reserve(n);
        for (uint32_t i = 0; i < n; ++i) {
            std::string name(r.str());
            v.emplace_back(std::move(name), std::string(r.str()));
        }
    } else if constexpr (is_list<T>) {
        const uint32_t n = bounded(r.array(), o);
        v.clear();
        v.reserve(n);
        for (uint32_t i = 0; i < n; ++i) {
            at("[" + std::to_string(i) + "]", [&] { get_value(r, v.emplace_back(), o); });
        }
    } else {
        static_assert(described<T>, "a field of a type the wire cannot carry");
        get_struct(r, v);
    }
}

// A map: known keys are read, unknown ones skipped (a newer minor version's fields); then every
// required field must have come.
template <class S>
void get_map(Reader& r, S& s) {
    constexpr size_t n_fields = std::tuple_size_v<decltype(Schema<S>::fields)>;
    bool seen[n_fields + 1] = {};
    for (uint32_t n = r.map(); n > 0; --n) {
        const std::string_view key = r.str();
        bool known = false;
        size_t i = 0;
        std::apply(
            [&](const auto&... f) {
                auto read = [&](const auto& field) {
                    if (!known && field.key == key) {
                        known = seen[i] = true;
                        at(field.key, [&] { get_value(r, s.*field.member, field.options); });
                    }
                    ++i;
                };
                (read(f), ...);
            },
            Schema<S>::fields);
        if (!known) r.skip();
    }
    size_t i = 0;
    std::apply(
        [&](const auto&... f) {
            auto check = [&](const auto& field) {
                if (field.options.presence == Presence::required && !seen[i])
                    throw DecodeError("missing field '" + std::string(field.key) + "'");
                ++i;
            };
            (check(f), ...);
        },
        Schema<S>::fields);
}

// An array by position: at least the required elements; elements after the known ones (a newer
// minor version's) are skipped.
template <class S>
void get_array(Reader& r, S& s) {
    uint32_t n = r.array();
    std::apply(
        [&](const auto&... f) {
            const uint32_t needed = ((f.options.presence == Presence::required ? 1u : 0u) + ... + 0u);
            if (n < needed) {
                throw DecodeError("needs at least " + std::to_string(needed) + " fields, got " + std::to_string(n));
            }
            auto read = [&](const auto& field) {
                if (n == 0) return;
                at(field.key, [&] { get_value(r, s.*field.member, field.options); });
                --n;
            };
            (read(f), ...);
        },
        Schema<S>::fields);
    for (; n > 0; --n) r.skip();
}

template <class S>
void get_struct(Reader& r, S& s) {
    if constexpr (fields::layout_of<S>() == Layout::array) get_array(r, s);
    else get_map(r, s);
}

// ---- what decoding checks beyond the fields' types: one function per message that has rules ----

template <class M>
void check(const M&) {}

void check(const Request& m) {
    if (m.path.empty() || m.path.front() != '/') throw DecodeError("path must start with '/', got '" + m.path + "'");
}

void check(const Outputs& m) {
    for (size_t i = 0; i < m.items.size(); ++i) {
        const uint32_t status = m.items[i].status;
        if (status != 0 && (status < 100 || status > 599)) {
            throw DecodeError("items[" + std::to_string(i) + "]: status " + std::to_string(status) +
                              " is not an HTTP status (100 to 599, or 0 after a response's first piece)");
        }
    }
}

void check(const Heartbeat& m) {
    if (!(m.kv_cache_usage >= 0 && m.kv_cache_usage <= 1)) throw DecodeError("kv_cache_usage must be within 0..1");
}

// A rank block must lie within the largest DP size.
void check_block(uint64_t start, uint64_t count) {
    if (count > max_node_ranks || start + count > max_node_ranks) {
        throw DecodeError("rank block " + std::to_string(start) + "+" + std::to_string(count) +
                          " is beyond the largest DP size (" + std::to_string(max_node_ranks) + ")");
    }
}

void check(const NodeHello& m) {
    if (m.node.empty()) throw DecodeError("missing field 'node': it is empty, and a node needs its name");
    check_block(m.start_rank.value_or(0), m.count);
    if (m.held_start) check_block(*m.held_start, m.held_count);
}

void check(const NodeConfig& m) { check_block(m.start_rank, m.count); }

void check(const Assign& m) { check_block(m.start_rank, m.count); }

template <class M>
Message get_message(Reader& r) {
    M m;
    if constexpr (std::is_same_v<M, Shutdown>) {
        r.skip();  // an empty map; any body will do
    } else {
        try {
            get_struct(r, m);
        } catch (const FieldError& e) {
            throw DecodeError("field '" + e.path + "': " + e.message);
        }
        check(m);
    }
    return m;
}

template <size_t... I>
Message get_body(Reader& r, size_t index, std::index_sequence<I...>) {
    using Get = Message (*)(Reader&);
    static constexpr Get getters[] = {&get_message<std::variant_alternative_t<I, Message>>...};
    return getters[index](r);
}

}  // namespace

bool is_node_link(const Message& message) {
    const Direction d = Types::info[message.index()].direction;
    return d == Direction::node_to_head || d == Direction::head_to_node;
}

const char* type_name(const Message& message) { return Types::info[message.index()].name; }

std::string encode(const Message& message, uint64_t epoch, uint32_t minor) {
    std::string out;
    Writer w(out);
    w.array(5);
    w.uint(protocol_major);
    w.uint(minor);
    w.uint(Types::info[message.index()].number);
    w.uint(epoch);
    std::visit([&](const auto& m) { put_struct(w, m, minor); }, message);
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
                             " is not supported; this side speaks " + std::to_string(protocol_major) + "." +
                             std::to_string(protocol_minor),
                         "version-mismatch"};
        }
        const uint64_t type = r.uint();
        size_t index = std::size(Types::info);
        for (size_t i = 0; i < std::size(Types::info); ++i) {
            if (Types::info[i].number == type) index = i;
        }
        if (index == std::size(Types::info)) {
            return Error{"unknown message type " + std::to_string(type), "unknown-type"};
        }
        Envelope env;
        env.epoch = r.uint();
        try {
            env.message = get_body(r, index, std::make_index_sequence<std::variant_size_v<Message>>{});
        } catch (const DecodeError& e) {
            return Error{std::string(Types::info[index].name) + ": " + e.what(), "malformed"};
        }
        if (!r.at_end()) return Error{"trailing bytes after message", "malformed"};
        return env;
    } catch (const DecodeError& e) {
        return Error{e.what(), "malformed"};
    }
}

}  // namespace dpengine::wire
