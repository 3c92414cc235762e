// Unit tests for the wire protocol messages (daemon/core/wire.hpp).
#include "core/msgpack.hpp"
#include "core/wire.hpp"

#include <catch2/catch.hpp>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

using namespace dpengine;
using namespace dpengine::wire;
using dpengine::msgpack::Reader;
using dpengine::msgpack::Writer;

namespace {

// ---- sample messages with every field set to something other than its default ----

Hello sample_hello() {
    Hello m;
    m.rank = 3;
    m.local_rank = 1;
    m.node = "node-b";
    m.incarnation = 0xfedcba9876543210ULL;
    m.build = "1.2.3 (abc)";
    m.dp_size = 4;
    m.model = "tiny-model";
    return m;
}

Config sample_config() {
    Config m;
    m.dp_size = 8;
    m.rank = 5;
    m.epoch = 12345678901ULL;
    m.group_kind = "gloo";
    m.group_rendezvous = "tcp://10.0.0.1:29500";
    m.heartbeat_interval = 0.25;
    m.engine.backend = "synthetic";
    m.engine.model = "m\xc3\xa9model";
    m.engine.max_batch = 64;
    m.engine.step_time_ms = 12.5;
    m.engine.max_model_len = 4096;
    m.sync = "lockstep";
    m.sync_interval = 32;
    m.group_timeout = 2.5;
    m.engine.command = {"vllm", "serve", "{model}", "--port", "{port}"};
    m.engine.env = {{"HF_HOME", "/srv/hf"}, {"VLLM_LOGGING_LEVEL", "WARNING"}};
    m.engine.health_path = "/health";
    m.engine.ready_timeout = 240.5;
    m.engine.max_concurrency = 32;
    m.engine.default_max_tokens = 48;
    m.engine.health_interval = 2.5;
    m.engine.health_failures = 4;
    return m;
}

Refused sample_refused() { return Refused{"rank-taken", "rank 3 is already connected from node-a"}; }

Ready sample_ready() {
    Ready m;
    m.max_batch = 256;
    m.device = "cpu (synthetic)";
    return m;
}

Request sample_request() {
    Request m;
    m.id = 0x1122334455667788ULL;
    m.path = "/v1/chat/completions";
    // The client's bytes, whatever they are: not necessarily UTF-8, NULs included.
    static constexpr char body[] = "{\"messages\":[{\"role\":\"user\",\"content\":\"\xe4\xb8\x96\xff\"}]}\0x";
    m.body.assign(body, sizeof body - 1);
    m.stream = true;
    return m;
}

Abort sample_abort() {
    Abort m;
    m.ids = {1, 2, 0xffffffffffffffffULL, 0};
    return m;
}

Outputs sample_outputs() {
    Outputs m;
    m.items.push_back(Output{1, 200, "text/event-stream", "data: {\"x\":1}\n\n", false, 2});
    m.items.push_back(Output{0xffffffffffULL, 0, "", "", true, 0});
    m.items.push_back(Output{7, 400, "application/json", "{\"error\":{}}", true, 0});
    m.items.push_back(Output{8, 0, "", std::string("\xff\0\xc3", 3), false, 4096});
    m.running = 3;
    m.waiting = 17;
    return m;
}

Heartbeat sample_heartbeat() {
    Heartbeat m;
    m.progress = 99999999999ULL;
    m.running = 2;
    m.waiting = 1;
    m.dummy_steps = 77777777777ULL;
    m.wave = 42;
    m.memory_used = 81920ULL << 20;
    m.engine_queued = 12;
    m.kv_cache_usage = 0.625;
    m.health_failures = 2;
    return m;
}

ErrorReply sample_error() { return ErrorReply{"malformed", "message truncated"}; }

std::vector<Message> all_samples() {
    return {sample_hello(), sample_config(),  sample_refused(),   sample_ready(), sample_request(),
            sample_abort(), sample_outputs(), sample_heartbeat(), Shutdown{},     sample_error()};
}

// ---- field-by-field comparison (the message structs have no operator==) ----

void check_same(const Hello& a, const Hello& b) {
    CHECK(a.rank == b.rank);
    CHECK(a.local_rank == b.local_rank);
    CHECK(a.node == b.node);
    CHECK(a.incarnation == b.incarnation);
    CHECK(a.build == b.build);
    CHECK(a.dp_size == b.dp_size);
    CHECK(a.model == b.model);
}
void check_same(const Config& a, const Config& b) {
    CHECK(a.dp_size == b.dp_size);
    CHECK(a.rank == b.rank);
    CHECK(a.epoch == b.epoch);
    CHECK(a.group_kind == b.group_kind);
    CHECK(a.group_rendezvous == b.group_rendezvous);
    CHECK(a.heartbeat_interval == b.heartbeat_interval);
    CHECK(a.engine.backend == b.engine.backend);
    CHECK(a.engine.model == b.engine.model);
    CHECK(a.engine.max_batch == b.engine.max_batch);
    CHECK(a.engine.step_time_ms == b.engine.step_time_ms);
    CHECK(a.engine.max_model_len == b.engine.max_model_len);
    CHECK(a.sync == b.sync);
    CHECK(a.sync_interval == b.sync_interval);
    CHECK(a.group_timeout == b.group_timeout);
    CHECK(a.engine.command == b.engine.command);
    CHECK(a.engine.env == b.engine.env);
    CHECK(a.engine.health_path == b.engine.health_path);
    CHECK(a.engine.ready_timeout == b.engine.ready_timeout);
    CHECK(a.engine.max_concurrency == b.engine.max_concurrency);
    CHECK(a.engine == b.engine);
}
void check_same(const Refused& a, const Refused& b) {
    CHECK(a.code == b.code);
    CHECK(a.message == b.message);
}
void check_same(const ErrorReply& a, const ErrorReply& b) {
    CHECK(a.code == b.code);
    CHECK(a.message == b.message);
}
void check_same(const Ready& a, const Ready& b) {
    CHECK(a.max_batch == b.max_batch);
    CHECK(a.device == b.device);
}
void check_same(const Request& a, const Request& b) {
    CHECK(a.id == b.id);
    CHECK(a.path == b.path);
    CHECK(a.body == b.body);
    CHECK(a.stream == b.stream);
}
void check_same(const Abort& a, const Abort& b) { CHECK(a.ids == b.ids); }
void check_same(const Outputs& a, const Outputs& b) {
    REQUIRE(a.items.size() == b.items.size());
    for (size_t i = 0; i < a.items.size(); ++i) {
        INFO("item " << i);
        CHECK(a.items[i].id == b.items[i].id);
        CHECK(a.items[i].status == b.items[i].status);
        CHECK(a.items[i].content_type == b.items[i].content_type);
        CHECK(a.items[i].data == b.items[i].data);
        CHECK(a.items[i].done == b.items[i].done);
        CHECK(a.items[i].tokens == b.items[i].tokens);
    }
    CHECK(a.running == b.running);
    CHECK(a.waiting == b.waiting);
}
void check_same(const Heartbeat& a, const Heartbeat& b) {
    CHECK(a.progress == b.progress);
    CHECK(a.running == b.running);
    CHECK(a.waiting == b.waiting);
    CHECK(a.dummy_steps == b.dummy_steps);
    CHECK(a.wave == b.wave);
    CHECK(a.memory_used == b.memory_used);
    CHECK(a.engine_queued == b.engine_queued);
    CHECK(a.kv_cache_usage == b.kv_cache_usage);
    CHECK(a.health_failures == b.health_failures);
}
void check_same(const Shutdown&, const Shutdown&) {}
void check_same(const GroupKv& a, const GroupKv& b) {
    CHECK(a.group_epoch == b.group_epoch);
    CHECK(a.key == b.key);
    CHECK(a.value == b.value);
}
void check_same(const GroupValue& a, const GroupValue& b) {
    CHECK(a.group_epoch == b.group_epoch);
    CHECK(a.key == b.key);
    CHECK(a.found == b.found);
    CHECK(a.value == b.value);
}
void check_same(const GroupForm& a, const GroupForm& b) {
    CHECK(a.group_epoch == b.group_epoch);
    CHECK(a.kind == b.kind);
    CHECK(a.members == b.members);
    CHECK(a.wave == b.wave);
}
void check_same(const StartWave& a, const StartWave& b) { CHECK(a.wave == b.wave); }
void check_same(const GroupState& a, const GroupState& b) {
    CHECK(a.group_epoch == b.group_epoch);
    CHECK(a.kind == b.kind);
    CHECK(a.state == b.state);
    CHECK(a.wave == b.wave);
    CHECK(a.steps == b.steps);
    CHECK(a.dummy_steps == b.dummy_steps);
    CHECK(a.steps_per_second == b.steps_per_second);
    CHECK(a.error == b.error);
}

void check_same(const Message& a, const Message& b) {
    REQUIRE(a.index() == b.index());
    std::visit([&](const auto& x) { check_same(x, std::get<std::decay_t<decltype(x)>>(b)); }, a);
}

Envelope decode_ok(std::string_view bytes) {
    auto r = decode(bytes);
    if (!r) FAIL("decode failed: [" << r.error().code << "] " << r.error().message);
    return std::move(r).value();
}

// Decodes and requires an error with the given code.
Error decode_error(std::string_view bytes, const std::string& code) {
    auto r = decode(bytes);
    if (r) FAIL("decode succeeded as " << type_name(r->message) << "; wanted error '" << code << "'");
    INFO("error message: " << r.error().message);
    CHECK(r.error().code == code);
    CHECK_FALSE(r.error().message.empty());
    return r.error();
}

// A hand-built message: header [major, minor, type, epoch] then whatever `body` writes.
std::string raw(uint64_t major, uint64_t minor, uint64_t type, uint64_t epoch,
                const std::function<void(Writer&)>& body) {
    std::string out;
    Writer w(out);
    w.array(5);
    w.uint(major);
    w.uint(minor);
    w.uint(type);
    w.uint(epoch);
    body(w);
    return out;
}

std::string raw_body(uint64_t type, const std::function<void(Writer&)>& body) {
    return raw(protocol_major, protocol_minor, type, 0, body);
}

// A body of message `type` that decoding must refuse as malformed, with an error message
// that contains `mentions`.
struct MalformedBody {
    const char* what;
    uint64_t type;
    std::function<void(Writer&)> body;
    std::string mentions = "";
};

void check_malformed(const std::vector<MalformedBody>& cases) {
    for (const auto& c : cases) {
        INFO(c.what);
        Error e = decode_error(raw_body(c.type, c.body), "malformed");
        CHECK_THAT(e.message, Catch::Contains(c.mentions));
    }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

TEST_CASE("wire: every message type round trips with all its fields", "[wire]") {
    const char* names[] = {"HELLO", "CONFIG",  "REFUSED",   "READY",    "REQUEST",
                           "ABORT", "OUTPUTS", "HEARTBEAT", "SHUTDOWN", "ERROR"};
    auto samples = all_samples();
    REQUIRE(samples.size() == 10);
    for (size_t i = 0; i < samples.size(); ++i) {
        const Message& m = samples[i];
        INFO("message " << type_name(m));
        CHECK(std::string(type_name(m)) == names[i]);
        for (uint64_t epoch : {uint64_t{0}, uint64_t{7}, uint64_t{0xffffffffffffffffULL}}) {
            std::string bytes = encode(m, epoch);
            Envelope env = decode_ok(bytes);
            CHECK(env.epoch == epoch);
            check_same(m, env.message);
        }
    }
}

TEST_CASE("wire: the header is [major, minor, type, epoch, body] with the documented type numbers", "[wire]") {
    auto samples = all_samples();
    const uint64_t numbers[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    for (size_t i = 0; i < samples.size(); ++i) {
        INFO("message " << type_name(samples[i]));
        std::string bytes = encode(samples[i], 42);
        Reader r(bytes);
        REQUIRE(r.array() == 5);
        CHECK(r.uint() == protocol_major);
        CHECK(r.uint() == protocol_minor);
        CHECK(r.uint() == numbers[i]);
        CHECK(r.uint() == 42);
        CHECK(r.peek() == msgpack::Kind::map);  // every body here is a map
        r.skip();
        CHECK(r.at_end());
    }
    CHECK(protocol_major == 2);
}

TEST_CASE("wire: defaults survive a round trip of default-constructed messages", "[wire]") {
    for (const Message& m : {Message{Hello{}}, Message{Config{}}, Message{Refused{}}, Message{Ready{}},
                             Message{Request{.path = "/"}},  // a path is required
                             Message{Abort{}}, Message{Outputs{}}, Message{Heartbeat{}}, Message{ErrorReply{}}}) {
        INFO("message " << type_name(m));
        check_same(m, decode_ok(encode(m)).message);
    }
}

TEST_CASE("wire: the DP group's messages round trip with their type numbers", "[wire]") {
    GroupKv set{7, "3", std::string("\x00\x01binary-ish address")};
    GroupKv get{7, "2", std::nullopt};
    GroupValue value{7, "2", true, "abcdef"};
    GroupForm form{9, "gloo", {0, 2, 3}, 41};
    StartWave wave{42};
    GroupState state{9, "gloo", "failed", 42, 1000, 250, 812.5, "peer closed the connection"};
    const std::pair<Message, uint64_t> cases[] = {{set, 25},  {get, 25},  {value, 26},
                                                  {form, 27}, {wave, 28}, {state, 29}};
    const char* names[] = {"GROUP_KV", "GROUP_KV", "GROUP_VALUE", "GROUP_FORM", "START_WAVE", "GROUP_STATE"};
    for (size_t i = 0; i < std::size(cases); ++i) {
        const auto& [m, number] = cases[i];
        INFO("message " << type_name(m));
        CHECK(std::string(type_name(m)) == names[i]);
        std::string bytes = encode(m, 5);
        Reader r(bytes);
        REQUIRE(r.array() == 5);
        r.uint();
        r.uint();
        CHECK(r.uint() == number);
        check_same(m, decode_ok(bytes).message);
    }
    // A look-up carries no value at all: absent, not empty.
    Envelope env = decode_ok(encode(get));
    CHECK_FALSE(std::get<GroupKv>(env.message).value.has_value());
}

TEST_CASE("wire: DP group messages without their required fields are malformed", "[wire]") {
    decode_error(raw_body(25, [](Writer& w) { w.map(0); }), "malformed");  // GROUP_KV without key
    decode_error(raw_body(27, [](Writer& w) { w.map(0); }), "malformed");  // GROUP_FORM without epoch
    decode_error(raw_body(28, [](Writer& w) { w.map(0); }), "malformed");  // START_WAVE without wave
    decode_error(raw_body(27,
                          [](Writer& w) {
                              w.map(2);
                              w.str("group_epoch");
                              w.uint(1);
                              w.str("members");
                              w.array(70000);
                          }),
                 "malformed");
}

TEST_CASE("wire: large lists round trip", "[wire]") {
    Abort abort;
    for (uint64_t i = 0; i < 5000; ++i) abort.ids.push_back(i * 0x10001ULL);
    check_same(Message{abort}, decode_ok(encode(abort)).message);

    Outputs outputs;
    for (uint32_t i = 0; i < 3000; ++i) outputs.items.push_back(Output{i, 0, "", std::string(i % 40, 'a'), false, i});
    outputs.running = 3000;
    check_same(Message{outputs}, decode_ok(encode(outputs)).message);

    Request request = sample_request();
    request.body = std::string(200000, 'p');
    check_same(Message{request}, decode_ok(encode(request)).message);
}

TEST_CASE("wire: optional fields take their defaults when absent", "[wire]") {
    SECTION("HELLO with only rank and incarnation") {
        auto bytes = raw_body(1, [](Writer& w) {
            w.map(2);
            w.str("rank");
            w.uint(2);
            w.str("incarnation");
            w.uint(99);
        });
        auto m = std::get<Hello>(decode_ok(bytes).message);
        CHECK(m.rank == 2);
        CHECK(m.incarnation == 99);
        CHECK(m.local_rank == 0);
        CHECK(m.node.empty());
        CHECK(m.dp_size == 0);
    }
    SECTION("REQUEST with only id and path") {
        auto bytes = raw_body(5, [](Writer& w) {
            w.map(2);
            w.str("path");
            w.str("/v1/completions");
            w.str("id");
            w.uint(5);
        });
        auto m = std::get<Request>(decode_ok(bytes).message);
        CHECK(m.id == 5);
        CHECK(m.path == "/v1/completions");
        CHECK(m.body.empty());
        CHECK_FALSE(m.stream);
    }
    SECTION("REQUEST body as a string: text either way") {
        auto bytes = raw_body(5, [](Writer& w) {
            w.map(3);
            w.str("id");
            w.uint(5);
            w.str("path");
            w.str("/v1/completions");
            w.str("body");
            w.str("{}");
        });
        CHECK(std::get<Request>(decode_ok(bytes).message).body == "{}");
    }
    SECTION("CONFIG with only dp_size and rank") {
        auto bytes = raw_body(2, [](Writer& w) {
            w.map(2);
            w.str("rank");
            w.uint(1);
            w.str("dp_size");
            w.uint(2);
        });
        auto m = std::get<Config>(decode_ok(bytes).message);
        CHECK(m.dp_size == 2);
        CHECK(m.rank == 1);
        CHECK(m.group_kind == "none");
        CHECK(m.heartbeat_interval == 1.0);
    }
    SECTION("a float field may be sent as an integer") {
        auto bytes = raw_body(2, [](Writer& w) {
            w.map(4);
            w.str("dp_size");
            w.uint(1);
            w.str("rank");
            w.uint(0);
            w.str("heartbeat_interval");
            w.uint(2);
            w.str("group_timeout");
            w.sint(3);
        });
        auto m = std::get<Config>(decode_ok(bytes).message);
        CHECK(m.heartbeat_interval == 2.0);
        CHECK(m.group_timeout == 3.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Forward compatibility
// ---------------------------------------------------------------------------------------------

TEST_CASE("wire: unknown keys in a body are skipped", "[wire]") {
    // A HELLO from a newer minor version with extra keys of several kinds, before, between
    // and after the known ones.
    auto bytes = raw(protocol_major, 3, 1, 11, [](Writer& w) {
        w.map(6);
        w.str("future_scalar");
        w.uint(123456);
        w.str("rank");
        w.uint(6);
        w.str("future_nested");
        w.map(2);
        w.str("a");
        w.array(3);
        w.nil();
        w.str("x");
        w.float64(1.5);
        w.str("b");
        w.map(0);
        w.str("incarnation");
        w.uint(777);
        w.str("node");
        w.str("node-z");
        w.str("future_string");
        w.str("ignored");
    });
    Envelope env = decode_ok(bytes);
    CHECK(env.epoch == 11);
    auto m = std::get<Hello>(env.message);
    CHECK(m.rank == 6);
    CHECK(m.incarnation == 777);
    CHECK(m.node == "node-z");

    SECTION("also with bin and ext values") {
        std::string body;
        Writer w(body);
        w.map(4);
        w.str("rank");
        w.uint(1);
        w.str("incarnation");
        w.uint(2);
        w.str("blob");
        body += std::string("\xc4\x03\x01\x02\x03", 5);
        w.str("ext");
        body += std::string("\xd6\x07\x01\x02\x03\x04", 6);
        auto with_bin = raw_body(1, [&](Writer&) {}) + body;
        auto h = std::get<Hello>(decode_ok(with_bin).message);
        CHECK(h.rank == 1);
        CHECK(h.incarnation == 2);
    }
    SECTION("in the nested engine config too") {
        auto config = raw_body(2, [](Writer& w) {
            w.map(3);
            w.str("dp_size");
            w.uint(2);
            w.str("rank");
            w.uint(0);
            w.str("engine");
            w.map(2);
            w.str("new_setting");
            w.array(2);
            w.uint(1);
            w.uint(2);
            w.str("max_batch");
            w.uint(9);
        });
        auto c = std::get<Config>(decode_ok(config).message);
        CHECK(c.engine.max_batch == 9);
    }
}

TEST_CASE("wire: a newer minor version of the same major is accepted", "[wire]") {
    auto bytes = raw(protocol_major, 7, 8, 3, [](Writer& w) {
        w.map(1);
        w.str("progress");
        w.uint(5);
    });
    Envelope env = decode_ok(bytes);
    CHECK(env.epoch == 3);
    CHECK(std::get<Heartbeat>(env.message).progress == 5);
}

TEST_CASE("wire: HEARTBEAT's activity fields are optional both ways", "[wire]") {
    // A rank that predates dummy_steps/wave/memory_used: its heartbeat decodes with them 0.
    // (This side's minor version, for the byte comparison below: the body is what counts.)
    auto old_shape = raw(protocol_major, protocol_minor, 8, 4, [](Writer& w) {
        w.map(3);
        w.str("progress");
        w.uint(12);
        w.str("running");
        w.uint(1);
        w.str("waiting");
        w.uint(2);
    });
    auto old_hb = std::get<Heartbeat>(decode_ok(old_shape).message);
    CHECK(old_hb.progress == 12);
    CHECK(old_hb.running == 1);
    CHECK(old_hb.waiting == 2);
    CHECK(old_hb.dummy_steps == 0);
    CHECK(old_hb.wave == 0);
    CHECK(old_hb.memory_used == 0);

    // Zero fields are left out, so such a heartbeat is byte for byte what an older rank or
    // head sends (and what an older peer reads without skipping anything).
    Heartbeat zeros;
    zeros.progress = 12;
    zeros.running = 1;
    zeros.waiting = 2;
    CHECK(encode(zeros, 4) == old_shape);

    // Each field travels on its own; the others stay 0.
    Heartbeat only_wave;
    only_wave.wave = 7;
    auto wave_hb = std::get<Heartbeat>(decode_ok(encode(only_wave)).message);
    CHECK(wave_hb.wave == 7);
    CHECK(wave_hb.dummy_steps == 0);
    CHECK(wave_hb.memory_used == 0);

    // A field added after these is skipped, the known ones still read.
    auto newer = raw(protocol_major, 0, 8, 4, [](Writer& w) {
        w.map(3);
        w.str("dummy_steps");
        w.uint(5);
        w.str("future_field");
        w.array(2);
        w.uint(1);
        w.str("x");
        w.str("memory_used");
        w.uint(1ULL << 40);
    });
    auto newer_hb = std::get<Heartbeat>(decode_ok(newer).message);
    CHECK(newer_hb.dummy_steps == 5);
    CHECK(newer_hb.memory_used == (1ULL << 40));
    CHECK(newer_hb.progress == 0);

    // A field of the wrong type is refused, not misread.
    auto wrong = raw(protocol_major, 0, 8, 4, [](Writer& w) {
        w.map(1);
        w.str("wave");
        w.str("seven");
    });
    decode_error(wrong, "malformed");
}

// ---------------------------------------------------------------------------------------------
// Errors and their codes
// ---------------------------------------------------------------------------------------------

TEST_CASE("wire: another major version is refused naming both versions", "[wire]") {
    auto bytes = raw(3, 0, 1, 0, [](Writer& w) {
        w.map(2);
        w.str("rank");
        w.uint(0);
        w.str("incarnation");
        w.uint(1);
    });
    Error e = decode_error(bytes, "version-mismatch");
    CHECK_THAT(e.message, Catch::Contains("3.0"));
    CHECK_THAT(e.message, Catch::Contains(std::to_string(protocol_major) + "." + std::to_string(protocol_minor)));

    SECTION("the version check comes before the body is read") {
        // A future major version may change the body completely.
        auto strange = raw(3, 5, 200, 0, [](Writer& w) {
            w.array(2);
            w.nil();
            w.nil();
        });
        Error e2 = decode_error(strange, "version-mismatch");
        CHECK_THAT(e2.message, Catch::Contains("3.5"));
    }
    SECTION("major 1, before requests carried the client's body") {
        auto add = raw(1, 0, 5, 0, [](Writer& w) { w.map(0); });
        Error e4 = decode_error(add, "version-mismatch");
        CHECK_THAT(e4.message, Catch::Contains("1.0"));
    }
    SECTION("major 0 too") {
        auto old = raw(0, 9, 1, 0, [](Writer& w) { w.map(0); });
        Error e3 = decode_error(old, "version-mismatch");
        CHECK_THAT(e3.message, Catch::Contains("0.9"));
    }
}

TEST_CASE("wire: unknown message types are refused as unknown-type", "[wire]") {
    for (uint64_t type :
         {uint64_t{0}, uint64_t{19}, uint64_t{99}, uint64_t{255}, uint64_t{256 + 1}, uint64_t{1} << 40}) {
        INFO("type " << type);
        auto bytes = raw_body(type, [](Writer& w) { w.map(0); });
        Error e = decode_error(bytes, "unknown-type");
        CHECK_THAT(e.message, Catch::Contains(std::to_string(type)));
    }
}

TEST_CASE("wire: garbage, empty and truncated input is malformed", "[wire]") {
    decode_error("", "malformed");
    decode_error("hello world", "malformed");
    decode_error(std::string("\xc1", 1), "malformed");
    decode_error(std::string("\x95", 1), "malformed");
    decode_error(std::string("\x95\x01\x00\x01\x00", 5), "malformed");  // header without body

    for (const Message& m : all_samples()) {
        std::string bytes = encode(m, 5);
        INFO("message " << type_name(m) << " of " << bytes.size() << " bytes");
        for (size_t n = 0; n < bytes.size(); ++n) {
            auto r = decode(std::string_view(bytes).substr(0, n));
            if (r) FAIL("a " << n << "-byte prefix decoded");
            CHECK(r.error().code == "malformed");
        }
    }
}

TEST_CASE("wire: trailing bytes after a message are malformed", "[wire]") {
    for (const Message& m : all_samples()) {
        INFO("message " << type_name(m));
        Error e = decode_error(encode(m) + std::string(1, '\0'), "malformed");
        CHECK_THAT(e.message, Catch::Contains("trailing"));
        decode_error(encode(m) + encode(m), "malformed");
    }
}

TEST_CASE("wire: the header must be an array of exactly 5 fields", "[wire]") {
    auto with_fields = [](uint32_t n) {
        std::string out;
        Writer w(out);
        w.array(n);
        const uint64_t values[] = {protocol_major, 0, 8, 0};
        for (uint32_t i = 0; i < n; ++i) {
            if (i < 4) w.uint(values[i]);
            else w.map(0);
        }
        return out;
    };
    decode_error(with_fields(0), "malformed");
    decode_error(with_fields(4), "malformed");
    decode_error(with_fields(6), "malformed");
    decode_ok(with_fields(5));  // the control: 5 fields is a HEARTBEAT

    // A header that claims 6 fields but holds a complete 5-field message.
    Heartbeat hb;
    hb.progress = 1234567;
    std::string claims_six = encode(hb);
    REQUIRE(static_cast<uint8_t>(claims_six[0]) == 0x95);
    claims_six[0] = static_cast<char>(0x96);
    decode_error(claims_six, "malformed");
    std::string claims_four = encode(hb);
    claims_four[0] = static_cast<char>(0x94);
    decode_error(claims_four, "malformed");

    std::string as_map;
    Writer w(as_map);
    w.map(1);
    w.uint(1);
    w.uint(0);
    decode_error(as_map, "malformed");
}

TEST_CASE("wire: wrong field types are malformed", "[wire]") {
    SECTION("header fields") {
        // [major, minor, type, epoch] with one field of the wrong type, then an empty body.
        const std::function<void(Writer&)> headers[] = {
            [](Writer& w) {
                w.str("1");
                w.uint(0);
                w.uint(1);
                w.uint(0);
            },  // major as a string
            [](Writer& w) {
                w.uint(protocol_major);
                w.uint(0);
                w.uint(8);
                w.sint(-1);
            },  // a negative epoch
            [](Writer& w) {
                w.uint(protocol_major);
                w.uint(0);
                w.str("hello");
                w.uint(0);
            },  // type as a string
        };
        for (const auto& fields : headers) {
            std::string out;
            Writer w(out);
            w.array(5);
            fields(w);
            w.map(0);
            decode_error(out, "malformed");
        }
    }
    SECTION("body that is not a map") {
        decode_error(raw_body(1, [](Writer& w) { w.array(0); }), "malformed");
        decode_error(raw_body(5, [](Writer& w) { w.str("id"); }), "malformed");
        decode_error(raw_body(7, [](Writer& w) { w.nil(); }), "malformed");
    }
    SECTION("body fields") {
        check_malformed({
            {"a key that is not a string", 8,
             [](Writer& w) {
                 w.map(1);
                 w.uint(1);
                 w.uint(2);
             }},
            {"HELLO rank as a string", 1,
             [](Writer& w) {
                 w.map(2);
                 w.str("rank");
                 w.str("3");
                 w.str("incarnation");
                 w.uint(1);
             },
             "string"},
            {"HELLO node as an integer", 1,
             [](Writer& w) {
                 w.map(3);
                 w.str("rank");
                 w.uint(3);
                 w.str("incarnation");
                 w.uint(1);
                 w.str("node");
                 w.uint(1);
             }},
            {"a negative rank", 1,
             [](Writer& w) {
                 w.map(2);
                 w.str("rank");
                 w.sint(-1);
                 w.str("incarnation");
                 w.uint(1);
             }},
            {"a 32-bit field (HELLO rank) given a value above 2^32-1", 1,
             [](Writer& w) {
                 w.map(2);
                 w.str("rank");
                 w.uint(0x100000000ULL);
                 w.str("incarnation");
                 w.uint(1);
             }},
            {"a 32-bit field (OUTPUTS running) given a value above 2^32-1", 7,
             [](Writer& w) {
                 w.map(1);
                 w.str("running");
                 w.uint(0x100000000ULL);
             }},
            {"REQUEST path as an integer", 5,
             [](Writer& w) {
                 w.map(2);
                 w.str("id");
                 w.uint(1);
                 w.str("path");
                 w.uint(1);
             }},
            {"REQUEST path that is not absolute", 5,
             [](Writer& w) {
                 w.map(2);
                 w.str("id");
                 w.uint(1);
                 w.str("path");
                 w.str("v1/completions");
             },
             "path"},
            {"REQUEST body as a list", 5,
             [](Writer& w) {
                 w.map(3);
                 w.str("id");
                 w.uint(1);
                 w.str("path");
                 w.str("/v1/completions");
                 w.str("body");
                 w.array(0);
             }},
            {"REQUEST stream as a string", 5,
             [](Writer& w) {
                 w.map(3);
                 w.str("id");
                 w.uint(1);
                 w.str("path");
                 w.str("/v1/completions");
                 w.str("stream");
                 w.str("true");
             }},
            {"ABORT ids with a negative id", 6,
             [](Writer& w) {
                 w.map(1);
                 w.str("ids");
                 w.array(2);
                 w.uint(1);
                 w.sint(-2);
             }},
            {"OUTPUTS item that is not an array", 7,
             [](Writer& w) {
                 w.map(1);
                 w.str("items");
                 w.array(1);
                 w.map(0);
             }},
            {"OUTPUTS item that is too short", 7,
             [](Writer& w) {
                 w.map(1);
                 w.str("items");
                 w.array(1);
                 w.array(5);
                 w.uint(1);
                 w.uint(200);
                 w.str("text/plain");
                 w.bin("x");
                 w.boolean(true);
             }},
            {"OUTPUTS item whose content type is not a string", 7,
             [](Writer& w) {
                 w.map(1);
                 w.str("items");
                 w.array(1);
                 w.array(6);
                 w.uint(1);
                 w.uint(200);
                 w.uint(1);
                 w.bin("x");
                 w.boolean(true);
                 w.uint(0);
             }},
            {"OUTPUTS item whose done is not a boolean", 7,
             [](Writer& w) {
                 w.map(1);
                 w.str("items");
                 w.array(1);
                 w.array(6);
                 w.uint(1);
                 w.uint(0);
                 w.str("");
                 w.bin("x");
                 w.uint(1);
                 w.uint(0);
             }},
            {"OUTPUTS item whose status is not an HTTP status", 7,
             [](Writer& w) {
                 w.map(1);
                 w.str("items");
                 w.array(1);
                 w.array(6);
                 w.uint(1);
                 w.uint(42);
                 w.str("");
                 w.bin("");
                 w.boolean(true);
                 w.uint(0);
             },
             "status"},
            {"CONFIG engine that is not a map", 2,
             [](Writer& w) {
                 w.map(3);
                 w.str("dp_size");
                 w.uint(1);
                 w.str("rank");
                 w.uint(0);
                 w.str("engine");
                 w.str("synthetic");
             }},
        });
    }
}

TEST_CASE("wire: missing required fields are malformed and named", "[wire]") {
    // The error names the missing field.
    check_malformed({
        {"HELLO without rank", 1,
         [](Writer& w) {
             w.map(2);
             w.str("node");
             w.str("n");
             w.str("incarnation");
             w.uint(1);
         },
         "'rank'"},
        {"HELLO without incarnation", 1,
         [](Writer& w) {
             w.map(2);
             w.str("rank");
             w.uint(1);
             w.str("local_rank");
             w.uint(0);
         },
         "'incarnation'"},
        {"HELLO with an empty body", 1, [](Writer& w) { w.map(0); }, "'rank'"},
        {"REQUEST without id", 5,
         [](Writer& w) {
             w.map(2);
             w.str("path");
             w.str("/v1/completions");
             w.str("body");
             w.bin("{}");
         },
         "'id'"},
        {"REQUEST without path", 5,
         [](Writer& w) {
             w.map(2);
             w.str("id");
             w.uint(1);
             w.str("body");
             w.bin("{}");
         },
         "'path'"},
        {"CONFIG without dp_size", 2,
         [](Writer& w) {
             w.map(2);
             w.str("rank");
             w.uint(0);
             w.str("epoch");
             w.uint(1);
         },
         "'dp_size'"},
        {"CONFIG without rank", 2,
         [](Writer& w) {
             w.map(2);
             w.str("dp_size");
             w.uint(2);
             w.str("epoch");
             w.uint(1);
         },
         "'rank'"},
        {"HELLO whose rank is only inside an unknown key", 1,
         [](Writer& w) {
             w.map(2);
             w.str("other");
             w.map(1);
             w.str("rank");
             w.uint(1);
             w.str("incarnation");
             w.uint(1);
         },
         "'rank'"},
    });
}

TEST_CASE("wire: hostile counts in a body are refused without allocating them", "[wire]") {
    // An ABORT claiming 2^32-1 ids, an OUTPUTS claiming 2^32-1 items: each fits in a few bytes.
    auto claim = [](uint64_t type, const char* key) {
        return raw_body(type,
                        [key](Writer& w) {
                            w.map(1);
                            w.str(key);
                        }) +
            std::string("\xdd\xff\xff\xff\xff", 5);
    };
    decode_error(claim(6, "ids"), "malformed");
    decode_error(claim(7, "items"), "malformed");
    decode_error(claim(1, "unknown"), "malformed");
    // A string claiming 4 GiB, and a REQUEST body likewise.
    decode_error(raw_body(1,
                          [](Writer& w) {
                              w.map(1);
                              w.str("node");
                          }) +
                     std::string("\xdb\xff\xff\xff\xff", 5),
                 "malformed");
    decode_error(raw_body(5,
                          [](Writer& w) {
                              w.map(1);
                              w.str("body");
                          }) +
                     std::string("\xc6\xff\xff\xff\xff", 5),
                 "malformed");
    // A body map claiming 2^32-1 pairs.
    decode_error(raw_body(1, [](Writer&) {}) + std::string("\xdf\xff\xff\xff\xff", 5), "malformed");
}

TEST_CASE("wire: deeply nested unknown values are malformed, not a crash", "[wire]") {
    std::string body;
    Writer w(body);
    w.map(3);
    w.str("rank");
    w.uint(1);
    w.str("incarnation");
    w.uint(1);
    w.str("deep");
    body += std::string(100000, '\x91');
    body += '\x01';
    decode_error(raw_body(1, [](Writer&) {}) + body, "malformed");
}

// ---------------------------------------------------------------------------------------------
// Randomized robustness: never a crash, always a value or an error with a known code
// ---------------------------------------------------------------------------------------------

namespace {

void check_outcome(std::string_view bytes, size_t& ok_count) {
    auto r = decode(bytes);
    if (r) {
        ++ok_count;
        // Whatever decoded must encode and decode to the same thing.
        std::string again = encode(r->message, r->epoch);
        auto r2 = decode(again);
        REQUIRE(r2.ok());
        REQUIRE(encode(r2->message, r2->epoch) == again);
        return;
    }
    const std::string& code = r.error().code;
    bool known = code == "malformed" || code == "unknown-type" || code == "version-mismatch";
    if (!known || r.error().message.empty()) {
        FAIL("unexpected error [" << code << "] '" << r.error().message << "'");
    }
}

}  // namespace

TEST_CASE("wire: random bytes never crash the decoder", "[wire][fuzz]") {
    std::mt19937_64 rng(0x5eed1234);
    size_t ok_count = 0;
    for (int i = 0; i < 10000; ++i) {
        size_t length = rng() % 96;
        std::string bytes(length, '\0');
        for (auto& c : bytes) c = static_cast<char>(rng());
        // Half of them start with a plausible header so that the body decoders are reached.
        if (i % 2 == 0 && length >= 5) {
            bytes[0] = static_cast<char>(0x95);
            bytes[1] = static_cast<char>(protocol_major);
            bytes[2] = static_cast<char>(rng() % 3);
            bytes[3] = static_cast<char>(1 + rng() % 10);
            bytes[4] = static_cast<char>(rng() % 4);
        }
        check_outcome(bytes, ok_count);
    }
    SUCCEED("decoded " << ok_count << " of 10000 random byte strings");
}

TEST_CASE("wire: random mutations of valid messages never crash the decoder", "[wire][fuzz]") {
    std::mt19937_64 rng(0xabcdef);
    std::vector<std::string> valid;
    for (const Message& m : all_samples()) valid.push_back(encode(m, 9));
    size_t ok_count = 0;
    for (int i = 0; i < 10000; ++i) {
        std::string bytes = valid[rng() % valid.size()];
        int mutations = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < mutations && !bytes.empty(); ++k) {
            size_t at = rng() % bytes.size();
            switch (rng() % 6) {
                case 0: bytes[at] = static_cast<char>(rng()); break;                           // replace a byte
                case 1: bytes[at] = static_cast<char>(bytes[at] ^ (1 << (rng() % 8))); break;  // flip a bit
                case 2: bytes.insert(at, 1, static_cast<char>(rng())); break;                  // insert a byte
                case 3: bytes.erase(at, 1); break;                                             // delete a byte
                case 4: bytes.resize(at); break;                                               // truncate
                case 5: {                                                                      // a length lie
                    const char lies[] = {'\xdd', '\xdf', '\xdb', '\xc6', '\xc9', '\xff'};
                    bytes[at] = lies[rng() % sizeof lies];
                    break;
                }
            }
        }
        check_outcome(bytes, ok_count);
    }
    SUCCEED("decoded " << ok_count << " of 10000 mutated messages");
}
