// The compatibility rule of the wire protocol (daemon/core/wire.hpp): a peer one minor version
// older or newer is understood. Messages of the previous minor are written as its peer wrote
// them (by hand, and by encode() for that minor); messages of the next minor carry a field and
// positional elements this side has never heard of.
#include "../support/wire_filled.hpp"
#include "core/msgpack.hpp"
#include "core/wire.hpp"
#include "core/wire_fields.hpp"

#include <catch2/catch.hpp>

#include <string>

using namespace dpengine;
using namespace dpengine::wire;
using dpengine::msgpack::Kind;
using dpengine::msgpack::Reader;
using dpengine::msgpack::Writer;

namespace {

static_assert(protocol_minor >= 1, "the tests of the previous minor need one");
constexpr uint32_t previous_minor = protocol_minor - 1;

Envelope decoded(const std::string& bytes) {
    auto r = decode(bytes);
    if (!r) FAIL("decode failed: [" << r.error().code << "] " << r.error().message);
    return std::move(r).value();
}

// [major, minor, type, epoch, then the body the caller writes.
std::string header(uint32_t minor, uint64_t type, uint64_t epoch = 0) {
    std::string out;
    Writer w(out);
    w.array(5);
    w.uint(protocol_major);
    w.uint(minor);
    w.uint(type);
    w.uint(epoch);
    return out;
}

// `s` as a peer of `minor` knows it: the fields added later at their defaults.
template <class S>
void as_of(uint32_t minor, S& s) {
    std::apply(
        [&](const auto&... f) {
            [[maybe_unused]] auto one = [&](const auto& field) {
                auto& v = s.*field.member;
                using T = std::remove_cvref_t<decltype(v)>;
                if (field.options.since > minor) v = T{};
                else if constexpr (requires { fields::Schema<T>::fields; }) as_of(minor, v);
                else if constexpr (requires { fields::Schema<typename T::value_type>::fields; }) {
                    for (auto& element : v) as_of(minor, element);
                }
            };
            (one(f), ...);
        },
        fields::Schema<S>::fields);
}

// Copies one msgpack value.
void copy(Reader& r, Writer& w) {
    switch (r.peek()) {
        case Kind::nil:
            r.nil();
            w.nil();
            break;
        case Kind::boolean: w.boolean(r.boolean()); break;
        case Kind::uint: w.uint(r.uint()); break;
        case Kind::sint: w.sint(r.sint()); break;
        case Kind::float64: w.float64(r.float64()); break;
        case Kind::str: w.str(r.str()); break;
        case Kind::bin: w.bin(r.bin()); break;
        case Kind::array: {
            const uint32_t n = r.array();
            w.array(n);
            for (uint32_t i = 0; i < n; ++i) copy(r, w);
            break;
        }
        case Kind::map: {
            const uint32_t n = r.map();
            w.map(n);
            for (uint32_t i = 0; i < 2 * n; ++i) copy(r, w);
            break;
        }
        case Kind::ext: FAIL("no wire message has ext values");
    }
}

// Copies an encoded S as a peer of the next minor would send it: each map with one more key,
// each positional array (OUTPUTS items, NODE_STATUS ranks, ...) with one more element.
template <class S>
void next_minor(Reader& r, Writer& w) {
    using fields::Layout;
    constexpr bool map = fields::layout_of<S>() == Layout::map;
    const uint32_t n = map ? r.map() : r.array();
    map ? w.map(n + 1) : w.array(n + 1);
    for (uint32_t i = 0; i < n; ++i) {
        std::string key;
        if constexpr (map) {
            key = r.str();
            w.str(key);
        }
        bool copied = false;
        uint32_t position = 0;
        std::apply(
            [&](const auto&... f) {
                [[maybe_unused]] auto one = [&](const auto& field) {
                    if (copied || (map ? field.key != key : position++ != i)) return;
                    copied = true;
                    using T = std::remove_cvref_t<decltype(std::declval<S&>().*field.member)>;
                    if constexpr (requires { fields::Schema<T>::fields; }) {
                        next_minor<T>(r, w);
                    } else if constexpr (requires { fields::Schema<typename T::value_type>::fields; }) {
                        const uint32_t elements = r.array();
                        w.array(elements);
                        for (uint32_t e = 0; e < elements; ++e) next_minor<typename T::value_type>(r, w);
                    } else {
                        copy(r, w);
                    }
                };
                (one(f), ...);
            },
            fields::Schema<S>::fields);
        if (!copied) copy(r, w);
    }
    if constexpr (map) w.str("added_in_the_next_minor");
    w.array(2);
    w.uint(1);
    w.str("unknown to this side");
}

template <class... T>
std::string as_next_minor(const Message& m, std::variant<T...>*) {
    std::string bytes = encode(m, 3);
    Reader r(bytes);
    REQUIRE(r.array() == 5);
    r.uint();
    r.uint();
    const uint64_t type = r.uint();
    const uint64_t epoch = r.uint();
    std::string out = header(protocol_minor + 1, type, epoch);
    Writer w(out);
    std::visit([&](const auto& message) { next_minor<std::decay_t<decltype(message)>>(r, w); }, m);
    REQUIRE(r.at_end());
    return out;
}

}  // namespace

TEST_CASE("wire compat: every type with every field set round trips", "[wire][compat]") {
    auto messages = filled::every_type();
    REQUIRE(messages.size() == std::size(Types::info));
    for (const Message& m : messages) {
        INFO(type_name(m));
        std::string bytes = encode(m, 7);
        Envelope env = decoded(bytes);
        CHECK(env.epoch == 7);
        CHECK(env.message.index() == m.index());
        CHECK(encode(env.message, 7) == bytes);
    }
}

TEST_CASE("wire compat: a message of the previous minor decodes, the newer fields at their defaults",
          "[wire][compat]") {
    bool some_field_is_newer = false;
    for (const Message& m : filled::every_type()) {
        INFO(type_name(m));
        std::string old = encode(m, 5, previous_minor);
        Reader r(old);
        REQUIRE(r.array() == 5);
        CHECK(r.uint() == protocol_major);
        CHECK(r.uint() == previous_minor);
        some_field_is_newer = some_field_is_newer || old.size() < encode(m, 5).size();

        Message expected = m;
        std::visit([](auto& message) { as_of(previous_minor, message); }, expected);
        Envelope env = decoded(old);
        CHECK(encode(env.message, 5) == encode(expected, 5));
    }
    CHECK(some_field_is_newer);  // else this minor added no field and the test shows nothing
}

TEST_CASE("wire compat: 2.0 messages as a 2.0 peer wrote them", "[wire][compat]") {
    REQUIRE(protocol_major == 2);
    SECTION("HELLO without pid") {
        std::string bytes = header(0, 1);
        Writer w(bytes);
        w.map(7);
        w.str("rank");
        w.uint(3);
        w.str("local_rank");
        w.uint(1);
        w.str("node");
        w.str("gpu2");
        w.str("incarnation");
        w.uint(99);
        w.str("build");
        w.str("0.1.0");
        w.str("dp_size");
        w.uint(4);
        w.str("model");
        w.str("m");
        auto hello = std::get<Hello>(decoded(bytes).message);
        CHECK(hello.rank == 3);
        CHECK(hello.node == "gpu2");
        CHECK(hello.pid == 0);  // not stated
    }
    SECTION("NODE_STATUS without leaving, NODE_HELLO with v") {
        std::string status = header(0, 13);
        Writer w(status);
        w.map(1);
        w.str("ranks");
        w.array(1);
        w.array(5);
        w.uint(2);
        w.str("running");
        w.uint(4242);
        w.uint(0);
        w.str("");
        auto s = std::get<NodeStatus>(decoded(status).message);
        CHECK_FALSE(s.leaving);
        REQUIRE(s.ranks.size() == 1);
        CHECK(s.ranks[0].pid == 4242);

        std::string hello = header(0, 11);
        Writer h(hello);
        h.map(6);
        h.str("node");
        h.str("gpu3");
        h.str("incarnation");
        h.uint(1);
        h.str("build");
        h.str("0.1.0");
        h.str("count");
        h.uint(2);
        h.str("dp_size");
        h.uint(4);
        h.str("v");
        h.uint(1);
        CHECK(std::get<NodeHello>(decoded(hello).message).count == 2);
    }
}

TEST_CASE("wire compat: a message of the next minor, with fields this side does not know, decodes", "[wire][compat]") {
    for (const Message& m : filled::every_type()) {
        INFO(type_name(m));
        std::string newer = as_next_minor(m, static_cast<Message*>(nullptr));
        CHECK(newer.find("added_in_the_next_minor") != std::string::npos);
        Envelope env = decoded(newer);
        CHECK(env.epoch == 3);
        CHECK(encode(env.message, 3) == encode(m, 3));
    }
}
