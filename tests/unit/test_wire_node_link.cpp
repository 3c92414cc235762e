// Unit tests for the node-link messages of the wire protocol (NODE_HELLO, NODE_CONFIG,
// NODE_STATUS, ASSIGN; daemon/core/wire.hpp): round trips, the documented type numbers, bounds,
// and bad input refused as a value.
#include "core/msgpack.hpp"
#include "core/wire.hpp"

#include <catch2/catch.hpp>

#include <string>

using namespace dpengine;
using namespace dpengine::wire;
using dpengine::msgpack::Reader;
using dpengine::msgpack::Writer;

namespace {

Envelope decoded(const std::string& bytes) {
    auto r = decode(bytes);
    if (!r) FAIL("decode failed: " << r.error().message << " (" << r.error().code << ")");
    return std::move(r).value();
}

Error refused(const std::string& bytes, const std::string& code = "malformed") {
    auto r = decode(bytes);
    if (r) FAIL("decoded what should have been refused");
    CHECK(r.error().code == code);
    return r.error();
}

// [1, 0, type, 0, body] with a body written by `body`.
template <class F>
std::string raw(uint64_t type, F&& body) {
    std::string out;
    Writer w(out);
    w.array(5);
    w.uint(protocol_major);
    w.uint(protocol_minor);
    w.uint(type);
    w.uint(0);
    body(w);
    return out;
}

NodeHello sample_hello() {
    NodeHello m;
    m.node = "node-b";
    m.incarnation = 0x0123456789abcdefULL;
    m.build = "0.1.0";
    m.count = 2;
    m.start_rank = 6;
    m.held_start = 6;
    m.held_count = 2;
    m.dp_size = 8;
    m.model = "synthetic";
    return m;
}

NodeStatus sample_status() {
    NodeStatus m;
    m.ranks.push_back({2, "running", 4242, 1, ""});
    m.ranks.push_back({3, "failed", 0, 5, "exhausted its restart budget"});
    return m;
}

}  // namespace

TEST_CASE("wire: NODE_HELLO round trips, with and without the optional blocks", "[wire][node-link]") {
    NodeHello in = sample_hello();
    Envelope env = decoded(encode(in, 9));
    CHECK(env.epoch == 9);
    REQUIRE(std::holds_alternative<NodeHello>(env.message));
    CHECK(is_node_link(env.message));
    CHECK(std::string(type_name(env.message)) == "NODE_HELLO");
    const auto& out = std::get<NodeHello>(env.message);
    CHECK(out.node == in.node);
    CHECK(out.incarnation == in.incarnation);
    CHECK(out.build == in.build);
    CHECK(out.count == 2);
    CHECK(out.start_rank == std::optional<uint32_t>(6));
    CHECK(out.held_start == std::optional<uint32_t>(6));
    CHECK(out.held_count == 2);
    CHECK(out.dp_size == 8);
    CHECK(out.model == "synthetic");

    NodeHello dynamic = sample_hello();
    dynamic.start_rank.reset();
    dynamic.held_start.reset();
    dynamic.held_count = 0;
    NodeHello back = std::get<NodeHello>(decoded(encode(dynamic)).message);  // a copy: the envelope is a temporary
    CHECK_FALSE(back.start_rank.has_value());
    CHECK_FALSE(back.held_start.has_value());
}

TEST_CASE("wire: NODE_CONFIG, NODE_STATUS and ASSIGN round trip", "[wire][node-link]") {
    auto config =
        std::get<NodeConfig>(decoded(encode(NodeConfig{8, 4, 2, 77, "head-a", {"ready", "draining"}})).message);
    CHECK(config.head == "head-a");
    CHECK(config.states == std::vector<std::string>{"ready", "draining"});
    CHECK(config.dp_size == 8);
    CHECK(config.start_rank == 4);
    CHECK(config.count == 2);
    CHECK(config.epoch == 77);

    CHECK(config.activity.empty());  // not sent: empty

    NodeConfig with_activity{8, 4, 2, 77, "head-a", {"ready", "ready"}};
    with_activity.activity = {{"gloo", 9, 1234, 81920ULL << 20, 412.5, 0.75, "cuda:0 (H100)", 3, 1, 57},
                              {"none", 0, 0, 0, 0, 0, "", 0, 0, 0}};
    auto back = std::get<NodeConfig>(decoded(encode(with_activity)).message);
    CHECK(back.activity == with_activity.activity);
    CHECK(back.states == with_activity.states);

    auto status = std::get<NodeStatus>(decoded(encode(sample_status())).message);
    REQUIRE(status.ranks.size() == 2);
    CHECK(status.ranks[0].rank == 2);
    CHECK(status.ranks[0].state == "running");
    CHECK(status.ranks[0].pid == 4242);
    CHECK(status.ranks[0].restarts == 1);
    CHECK(status.ranks[1].state == "failed");
    CHECK(status.ranks[1].last_error == "exhausted its restart budget");
    CHECK_FALSE(status.leaving);

    NodeStatus goodbye = sample_status();
    goodbye.leaving = true;
    auto left = std::get<NodeStatus>(decoded(encode(goodbye)).message);
    CHECK(left.leaving);
    CHECK(left.ranks.size() == 2);

    auto assign = std::get<Assign>(decoded(encode(Assign{65534, 2, 3})).message);
    CHECK(assign.start_rank == 65534);
    CHECK(assign.count == 2);
    CHECK(assign.epoch == 3);
    CHECK_FALSE(is_node_link(Message{Hello{}}));
}

TEST_CASE("wire: node-link messages use type numbers 11 to 14", "[wire][node-link]") {
    const std::pair<Message, uint64_t> cases[] = {
        {sample_hello(), 11}, {NodeConfig{}, 12}, {sample_status(), 13}, {Assign{}, 14}};
    for (const auto& [message, number] : cases) {
        INFO(type_name(message));
        std::string bytes = encode(message);
        Reader r(bytes);
        REQUIRE(r.array() == 5);
        r.uint();
        r.uint();
        CHECK(r.uint() == number);
    }
    for (uint64_t unknown : {15, 19}) refused(raw(unknown, [](Writer& w) { w.map(0); }), "unknown-type");
}

TEST_CASE("wire: node-link messages missing required fields are malformed and named", "[wire][node-link]") {
    Error e = refused(raw(11, [](Writer& w) {
        w.map(2);
        w.str("node");
        w.str("b");
        w.str("count");
        w.uint(1);
    }));
    CHECK_THAT(e.message, Catch::Contains("incarnation"));
    e = refused(raw(11, [](Writer& w) {
        w.map(2);
        w.str("incarnation");
        w.uint(1);
        w.str("count");
        w.uint(1);
    }));
    CHECK_THAT(e.message, Catch::Contains("node"));
    e = refused(raw(14, [](Writer& w) {
        w.map(1);
        w.str("start_rank");
        w.uint(1);
    }));
    CHECK_THAT(e.message, Catch::Contains("count"));
    e = refused(raw(12, [](Writer& w) { w.map(0); }));
    CHECK_THAT(e.message, Catch::Contains("start_rank"));
    // An activity entry short of its 6 elements.
    e = refused(raw(12, [](Writer& w) {
        w.map(3);
        w.str("start_rank");
        w.uint(0);
        w.str("count");
        w.uint(1);
        w.str("activity");
        w.array(1);
        w.array(2);
        w.str("gloo");
        w.uint(3);
    }));
    CHECK_THAT(e.message, Catch::Contains("activity"));
}

TEST_CASE("wire: node-link rank blocks beyond the largest DP size are refused", "[wire][node-link]") {
    // Encoding writes what it is given; decoding checks the bounds.
    Error e = refused(encode(Assign{65535, 2, 1}));
    CHECK_THAT(e.message, Catch::Contains("largest DP size"));
    refused(encode(NodeConfig{4, 0, 70000, 1}));
    NodeHello hello = sample_hello();
    hello.start_rank = 65536;
    hello.count = 1;
    refused(encode(hello));
    hello = sample_hello();
    hello.held_start = 0xffffffffu;
    refused(encode(hello));
    // A rank number that does not fit 32 bits.
    refused(raw(14, [](Writer& w) {
        w.map(2);
        w.str("start_rank");
        w.uint(uint64_t{1} << 33);
        w.str("count");
        w.uint(1);
    }));
}

TEST_CASE("wire: NODE_STATUS refuses hostile counts and short entries", "[wire][node-link]") {
    // 2^32-1 ranks claimed in five bytes: refused before anything is allocated.
    refused(raw(13,
                [](Writer& w) {
                    w.map(1);
                    w.str("ranks");
                }) +
            std::string("\xdd\xff\xff\xff\xff", 5));
    Error e = refused(raw(13, [](Writer& w) {
        w.map(1);
        w.str("ranks");
        w.array(1);
        w.array(2);
        w.uint(1);
        w.str("running");
    }));
    CHECK_THAT(e.message, Catch::Contains("5 fields"));
    // Wrong types, and truncation at every length.
    refused(raw(13, [](Writer& w) {
        w.map(1);
        w.str("ranks");
        w.str("not a list");
    }));
    std::string bytes = encode(sample_status());
    for (size_t n = 0; n < bytes.size(); ++n) {
        auto r = decode(std::string_view(bytes).substr(0, n));
        CHECK_FALSE(r);
    }
    // Fields appended by a newer minor version are skipped.
    auto later = raw(13, [](Writer& w) {
        w.map(2);
        w.str("ranks");
        w.array(1);
        w.array(6);
        w.uint(5);
        w.str("running");
        w.uint(10);
        w.uint(0);
        w.str("");
        w.str("extra");
        w.str("future");
        w.uint(1);
    });
    auto status = std::get<NodeStatus>(decoded(later).message);
    REQUIRE(status.ranks.size() == 1);
    CHECK(status.ranks[0].rank == 5);
}

TEST_CASE("wire: NODE_STATUS is the bytes of protocol 2.0 unless leaving", "[wire][node-link]") {
    // A 2.0 head skips what it does not know; a status without leaving carries nothing new.
    std::string plain = encode(sample_status());
    CHECK(plain.find("leaving") == std::string::npos);
    NodeStatus goodbye = sample_status();
    goodbye.leaving = true;
    CHECK(encode(goodbye).find("leaving") != std::string::npos);
}

TEST_CASE("wire: NODE_CONFIG activity items of 2.0 (6 elements) and of a later minor decode", "[wire][node-link]") {
    auto entry = [](Writer& w, uint32_t elements) {
        w.array(elements);
        w.str("gloo");
        w.uint(4);
        w.uint(7);
        w.uint(1024);
        w.float64(10.5);
        w.float64(0.25);
        if (elements >= 10) {
            w.str("cpu (synthetic)");
            w.uint(2);
            w.uint(1);
            w.uint(99);
        }
        for (uint32_t i = 10; i < elements; ++i) w.str("appended later");
    };
    auto config = [&](uint32_t elements) {
        return std::get<NodeConfig>(decoded(raw(12, [&](Writer& w) {
                                        w.map(3);
                                        w.str("start_rank");
                                        w.uint(0);
                                        w.str("count");
                                        w.uint(1);
                                        w.str("activity");
                                        w.array(1);
                                        entry(w, elements);
                                    })).message);
    };
    auto old = config(6).activity.at(0);
    CHECK(old.group_kind == "gloo");
    CHECK(old.dummy_step_share == 0.25);
    CHECK(old.device.empty());
    CHECK(old.served == 0);
    auto later = config(12).activity.at(0);
    CHECK(later.device == "cpu (synthetic)");
    CHECK(later.in_flight == 2);
    CHECK(later.waiting == 1);
    CHECK(later.served == 99);
}
