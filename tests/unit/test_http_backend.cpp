// The pure parts of the http backend: placeholder expansion, the launch plan, the request it
// sends, and the reading of the server's event stream (split anywhere, multi-line data,
// [DONE], usage and errors).
#include "core/placeholders.hpp"
#include "engine/child_process.hpp"
#include "engine/http_backend.hpp"
#include "engine/openai_stream.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <poll.h>
#include <unistd.h>

using namespace dpengine;
using namespace dpengine::engine;

namespace {

PlaceholderValues sample_values() {
    PlaceholderValues v;
    v.port = 40123;
    v.gpu = "3";
    v.rank = 7;
    v.local_rank = 1;
    v.model = "org/model";
    return v;
}

// Feeds TEXT to a fresh parser in pieces of SIZE bytes; returns the events.
std::vector<std::string> parse_in_pieces(std::string_view text, size_t size) {
    SseParser parser;
    std::vector<std::string> events;
    for (size_t at = 0; at < text.size(); at += size) REQUIRE(parser.feed(text.substr(at, size), events));
    return events;
}

// Live (not zombie) processes whose process group is PGID, from /proc.
int live_members(pid_t pgid) {
    int n = 0;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
        std::string name = entry.path().filename();
        if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit)) continue;
        std::ifstream stat(entry.path() / "stat");
        std::string text((std::istreambuf_iterator<char>(stat)), {});
        size_t close = text.rfind(')');
        if (close == std::string::npos) continue;
        char state = 0;
        long ppid = 0, pgrp = 0;
        if (std::sscanf(text.c_str() + close + 1, " %c %ld %ld", &state, &ppid, &pgrp) == 3 && pgrp == pgid &&
            state != 'Z' && state != 'X')
            ++n;
    }
    return n;
}

bool has_entry(const LaunchPlan& plan, const std::string& entry) {
    return std::find(plan.environment.begin(), plan.environment.end(), entry) != plan.environment.end();
}

}  // namespace

TEST_CASE("placeholders: every known name is replaced, braces can be escaped", "[http]") {
    auto v = sample_values();
    CHECK(expand_placeholders("--port={port}", v).value() == "--port=40123");
    CHECK(expand_placeholders("{gpu}/{rank}/{local_rank}/{model}", v).value() == "3/7/1/org/model");
    CHECK(expand_placeholders("{{\"a\": {port}}}", v).value() == "{\"a\": 40123}");
    CHECK(expand_placeholders("plain", v).value() == "plain");
    CHECK(expand_placeholders("", v).value() == "");

    auto unknown = expand_placeholders("--x={ports}", v);
    REQUIRE_FALSE(unknown.ok());
    CHECK_THAT(unknown.error().message, Catch::StartsWith("unknown placeholder '{ports}' in '--x={ports}'"));
    CHECK_THAT(unknown.error().message, Catch::Contains("'{{' or '}}' writes a literal brace"));
    CHECK_THAT(expand_placeholders("{port", v).error().message, Catch::StartsWith("a '{' without its '}'"));
    CHECK_THAT(expand_placeholders("port}", v).error().message, Catch::StartsWith("a '}' without its '{'"));
    CHECK_THAT(expand_placeholders("{}", v).error().message, Catch::StartsWith("unknown placeholder '{}'"));
    CHECK(check_placeholders("{model}").ok());
    CHECK_FALSE(check_placeholders("{modell}").ok());
}

TEST_CASE("http backend: the launch plan expands the command and picks the GPU", "[http]") {
    wire::EngineConfig config;
    config.backend = "http";
    config.model = "m";
    config.command = {"srv", "--port", "{port}", "--model", "{model}", "--tag", "r{rank}-l{local_rank}-g{gpu}"};
    config.env = {{"SERVER_PORT", "{port}"}};
    RankIdentity identity{5, 1};

    auto plan = plan_launch(config, identity, 4321, {"PATH=/usr/bin", "HOME=/root", "NOTIFY_SOCKET=/run/x"});
    REQUIRE(plan.ok());
    CHECK(plan->argv == std::vector<std::string>{"srv", "--port", "4321", "--model", "m", "--tag", "r5-l1-g1"});
    CHECK(plan->gpu == "1");
    CHECK(has_entry(*plan, "CUDA_VISIBLE_DEVICES=1"));
    CHECK(has_entry(*plan, "SERVER_PORT=4321"));
    CHECK(has_entry(*plan, "PATH=/usr/bin"));
    CHECK_FALSE(has_entry(*plan, "NOTIFY_SOCKET=/run/x"));  // the daemon's, not the server's
    CHECK(plan->command_line == "srv --port 4321 --model m --tag r5-l1-g1");

    // The daemon's own CUDA_VISIBLE_DEVICES: the rank takes its entry.
    plan = plan_launch(config, identity, 4321, {"CUDA_VISIBLE_DEVICES=4,6"});
    REQUIRE(plan.ok());
    CHECK(plan->gpu == "6");
    CHECK(plan->argv.back() == "r5-l1-g6");
    CHECK(has_entry(*plan, "CUDA_VISIBLE_DEVICES=6"));

    auto too_few = plan_launch(config, identity, 4321, {"CUDA_VISIBLE_DEVICES=4"});
    REQUIRE_FALSE(too_few.ok());
    CHECK_THAT(too_few.error().message, Catch::Contains("local rank 1 has no GPU"));

    // engine.env may say otherwise, and wins.
    config.env = {{"CUDA_VISIBLE_DEVICES", "{rank}"}};
    plan = plan_launch(config, identity, 4321, {"CUDA_VISIBLE_DEVICES=4,6"});
    REQUIRE(plan.ok());
    CHECK(plan->gpu == "5");
    CHECK(has_entry(*plan, "CUDA_VISIBLE_DEVICES=5"));
    CHECK(std::count_if(plan->environment.begin(), plan->environment.end(),
                        [](const std::string& e) { return e.rfind("CUDA_VISIBLE_DEVICES=", 0) == 0; }) == 1);

    config.command = {"srv", "{bad}"};
    CHECK_THAT(plan_launch(config, identity, 1, {}).error().message, Catch::StartsWith("engine.command[1]: unknown"));
    config.command = {};
    CHECK_THAT(plan_launch(config, identity, 1, {}).error().message, Catch::StartsWith("engine.command is empty"));
}

TEST_CASE("http backend: the request streams with usage and carries the sampling settings", "[http]") {
    wire::Add add;
    add.id = 9;
    add.prompt = "say \"hi\"";
    add.max_tokens = 12;
    add.temperature = 0.5;
    add.top_p = 0.25;
    add.seed = 42;
    add.stop = {"\n", "END"};
    auto body = boost::json::parse(completion_request_body(add, "org/model")).as_object();
    CHECK(body.at("model").as_string() == "org/model");
    CHECK(body.at("prompt").as_string() == "say \"hi\"");
    CHECK(body.at("max_tokens").to_number<int>() == 12);
    CHECK(body.at("temperature").to_number<double>() == 0.5);
    CHECK(body.at("top_p").to_number<double>() == 0.25);
    CHECK(body.at("seed").to_number<int64_t>() == 42);
    CHECK(body.at("stop").as_array().size() == 2);
    CHECK(body.at("stream").as_bool());
    CHECK(body.at("stream_options").at("include_usage").as_bool());

    add.seed = 0;
    add.stop.clear();
    body = boost::json::parse(completion_request_body(add, "m")).as_object();
    CHECK_FALSE(body.contains("seed"));  // 0: the client gave none
    CHECK_FALSE(body.contains("stop"));
}

TEST_CASE("sse: events are whole whatever the read boundaries", "[http]") {
    const std::string stream =
        "data: {\"a\":1}\n\n"
        ": a comment\r\n"
        "event: ignored\r\n"
        "data: line one\r\n"
        "data:line two\r\n"
        "\r\n"
        "id: 3\rdata: cr only\r\r"
        "data\n\n"  // a field without a colon: empty data
        "data: [DONE]\n\n";
    const std::vector<std::string> expected = {"{\"a\":1}", "line one\nline two", "cr only", "", "[DONE]"};
    for (size_t size : {1u, 2u, 3u, 5u, 7u, 1000u}) {
        INFO("pieces of " << size);
        CHECK(parse_in_pieces(stream, size) == expected);
    }

    SseParser parser;
    std::vector<std::string> events;
    REQUIRE(parser.feed("data: partial", events));
    CHECK(events.empty());
    CHECK_FALSE(parser.idle());
    REQUIRE(parser.feed("\n", events));
    CHECK_FALSE(parser.idle());  // the event is not over before its empty line
    REQUIRE(parser.feed("\n", events));
    CHECK(events == std::vector<std::string>{"partial"});
    CHECK(parser.idle());
    // An empty line with no data before it is no event.
    REQUIRE(parser.feed("\n\n: only a comment\n\n", events));
    CHECK(events.size() == 1);
}

TEST_CASE("sse: an event beyond the size limit is refused", "[http]") {
    SseParser parser;
    std::vector<std::string> events;
    std::string big(SseParser::max_event_bytes + 10, 'x');
    CHECK_FALSE(parser.feed("data: " + big, events));
}

TEST_CASE("completion chunks: text, finish reason, usage and errors", "[http]") {
    auto c = parse_completion_chunk(
        R"({"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" ba","logprobs":null,"finish_reason":null}],"usage":null})");
    REQUIRE(c.ok());
    CHECK(c->text == " ba");
    CHECK(c->finish_reason.empty());
    CHECK_FALSE(c->completion_tokens);

    c = parse_completion_chunk(R"({"choices":[{"index":0,"text":"","finish_reason":"length"}]})");
    REQUIRE(c.ok());
    CHECK(c->finish_reason == "length");

    c = parse_completion_chunk(R"({"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":16,"total_tokens":20}})");
    REQUIRE(c.ok());
    CHECK(c->text.empty());
    CHECK(c->prompt_tokens == 4u);
    CHECK(c->completion_tokens == 16u);

    c = parse_completion_chunk(R"({"error":{"message":"out of memory","type":"server_error"}})");
    REQUIRE(c.ok());
    CHECK(c->error == "out of memory");

    CHECK(parse_completion_chunk("not json").error().code == "bad-upstream");
    CHECK_THAT(parse_completion_chunk("[1]").error().message, Catch::Contains("not a JSON object"));
    CHECK_THAT(parse_completion_chunk(R"({"choices":{}})").error().message, Catch::Contains("not an array"));
    CHECK_THAT(parse_completion_chunk(R"({"choices":[{"text":5}]})").error().message,
               Catch::Contains("\"text\" is not a string"));
}

TEST_CASE("child process: a missing program is named, and stop() ends the whole group", "[http]") {
    auto missing = ChildProcess::start({"no-such-program-for-dpengine"}, {"PATH=/nonexistent"});
    REQUIRE_FALSE(missing.ok());
    CHECK_THAT(missing.error().message, Catch::Contains("'no-such-program-for-dpengine' is not an executable"));

    // A leader and a background member that both ignore SIGTERM: only SIGKILL ends them.
    auto child = ChildProcess::start({"sh", "-c", "trap '' TERM; sleep 60 & echo started; wait"},
                                     {"PATH=/usr/bin:/bin"});
    REQUIRE(child.ok());
    pid_t leader = child->pid();
    CHECK(getpgid(leader) == leader);
    int out = child->take_stdout();
    std::string said;
    char buf[64];
    pollfd p{out, POLLIN, 0};
    while (said.find("started\n") == std::string::npos && poll(&p, 1, 10000) > 0) {
        ssize_t n = read(out, buf, sizeof buf);
        if (n <= 0) break;
        said.append(buf, static_cast<size_t>(n));
    }
    close(out);
    REQUIRE(said == "started\n");
    CHECK(live_members(leader) == 2);
    CHECK_FALSE(child->reap());

    child->stop(std::chrono::milliseconds(200));
    auto status = child->reap();
    REQUIRE(status);
    CHECK(describe_wait_status(*status) == "was killed by signal KILL");
    for (int i = 0; i < 100 && live_members(leader) > 0; ++i) usleep(20000);
    CHECK(live_members(leader) == 0);
}
