// The pure parts of the http backend: placeholder expansion, the launch plan, the cutting of
// the server's event stream into whole events in its own bytes (split anywhere, every line
// ending), the usage it counts tokens by, and the load figures of vLLM's and llama-server's
// /metrics and llama-server's /slots.
#include "core/placeholders.hpp"
#include "engine/child_process.hpp"
#include "engine/http_backend.hpp"
#include "engine/openai_stream.hpp"

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

// Feeds TEXT to a fresh splitter cut at CUTS (ascending offsets); returns the events and, last,
// what finish() gives back.
std::vector<std::string> split_at(std::string_view text, const std::vector<size_t>& cuts) {
    SseSplitter splitter;
    std::vector<std::string> events;
    size_t from = 0;
    for (size_t cut : cuts) {
        REQUIRE(splitter.feed(text.substr(from, cut - from), events));
        from = cut;
    }
    REQUIRE(splitter.feed(text.substr(from), events));
    events.push_back(splitter.finish());
    return events;
}

std::string joined(const std::vector<std::string>& parts) {
    std::string out;
    for (const auto& p : parts) out += p;
    return out;
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

TEST_CASE("sse: events come out whole and in the server's bytes, whatever the splits", "[http]") {
    // Every line ending, comments, other fields, empty lines before an event, a field without
    // a colon, and a last event that a CR ends: complete only at the end of the stream, so
    // finish() returns it.
    const std::vector<std::string> expected = {
        "data: {\"a\":1}\n\n",
        "\n\r\n: empty lines first\n\n",
        ": a comment\r\nevent: x\r\ndata: line one\r\ndata:line two\r\n\r\n",
        "id: 3\rdata: cr only\r\r",
        "data\n\n",
        "data: mixed\r\n\r",  // CRLF, then a lone CR ends the event
        "data: [DONE]\r\r",
    };
    const std::string stream = joined(expected);

    CHECK(split_at(stream, {}) == expected);
    // Every single cut, and many pairs of cuts (inside each CRLF and CR CR among them).
    for (size_t i = 1; i < stream.size(); ++i) {
        INFO("cut at " << i);
        REQUIRE(split_at(stream, {i}) == expected);
        for (size_t j = i + 1; j < stream.size(); j += 3) {
            INFO("and at " << j);
            REQUIRE(split_at(stream, {i, j}) == expected);
        }
    }
    std::vector<size_t> every_byte(stream.size());
    for (size_t i = 0; i < stream.size(); ++i) every_byte[i] = i;
    CHECK(split_at(stream, every_byte) == expected);
}

TEST_CASE("sse: an event is complete at its empty line, not before", "[http]") {
    SseSplitter splitter;
    std::vector<std::string> events;
    REQUIRE(splitter.feed("data: partial", events));
    REQUIRE(splitter.feed("\n", events));
    CHECK(events.empty());
    REQUIRE(splitter.feed("\ndata: next", events));
    CHECK(events == std::vector<std::string>{"data: partial\n\n"});
    // An LF-ended event goes out at once; a CR-ended one waits for the next byte.
    REQUIRE(splitter.feed("\n\r", events));
    CHECK(events.size() == 1);
    REQUIRE(splitter.feed("\n", events));
    CHECK(events.back() == "data: next\n\r\n");
    REQUIRE(splitter.feed("data: x\r\r", events));
    CHECK(events.size() == 2);
    REQUIRE(splitter.feed("d", events));
    CHECK(events.back() == "data: x\r\r");
    // The end of the stream gives back what is left, unfinished or not.
    CHECK(splitter.finish() == "d");
    CHECK(splitter.finish().empty());
}

TEST_CASE("sse: an event beyond the size limit is refused", "[http]") {
    SseSplitter splitter(64);
    std::vector<std::string> events;
    REQUIRE(splitter.feed("data: " + std::string(50, 'x') + "\n\n", events));
    CHECK(events.size() == 1);
    CHECK_FALSE(splitter.feed("data: " + std::string(60, 'y'), events));
    // The limit is per event: many small ones are fine.
    SseSplitter many(64);
    std::string stream;
    for (int i = 0; i < 100; ++i) stream += "data: " + std::to_string(i) + "\n\n";
    REQUIRE(many.feed(stream, events));
    CHECK(events.size() == 101);
}

TEST_CASE("sse: the data of an event, and the usage of a chunk", "[http]") {
    CHECK(sse_event_data("data: {\"a\":1}\n\n") == "{\"a\":1}");
    CHECK(sse_event_data(": c\r\nevent: e\r\ndata: one\r\ndata:two\r\n\r\n") == "one\ntwo");
    CHECK(sse_event_data("data\rdata: x\r\r") == "\nx");
    CHECK(sse_event_data(": only a comment\n\n").empty());

    CHECK(usage_completion_tokens(R"({"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":16}})") == 16u);
    CHECK_FALSE(usage_completion_tokens(R"({"choices":[{"text":"x"}],"usage":null})"));
    CHECK_FALSE(usage_completion_tokens(R"({"usage":{"prompt_tokens":4}})"));
    CHECK_FALSE(usage_completion_tokens(R"({"usage":{"completion_tokens":-1}})"));
    CHECK_FALSE(usage_completion_tokens(R"(not json "completion_tokens")"));
    CHECK(event_completion_tokens("data: {\"usage\":{\"completion_tokens\":7}}\r\n\r\n") == 7u);
    CHECK_FALSE(event_completion_tokens("data: [DONE]\n\n"));
}

TEST_CASE("http backend: content types and request paths", "[http]") {
    CHECK(is_event_stream("text/event-stream"));
    CHECK(is_event_stream("text/event-stream; charset=utf-8"));
    CHECK(is_event_stream(" Text/Event-Stream ;charset=utf-8"));
    CHECK_FALSE(is_event_stream("application/json"));
    CHECK_FALSE(is_event_stream("text/event-streams"));
    CHECK_FALSE(is_event_stream(""));

    CHECK(valid_request_path("/v1/chat/completions"));
    CHECK(valid_request_path("/tokenize?x=1"));
    CHECK_FALSE(valid_request_path(""));
    CHECK_FALSE(valid_request_path("v1/completions"));
    CHECK_FALSE(valid_request_path("/v1/completions HTTP/1.1\r\nX-Evil: 1"));
    CHECK_FALSE(valid_request_path("/a b"));
    CHECK_FALSE(valid_request_path("/caf\xc3\xa9"));
}

TEST_CASE("load: vLLM's and llama-server's /metrics", "[http]") {
    // vLLM (V1), two engines behind one server, with the older KV cache name beside the newer.
    const std::string vllm =
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        "vllm:num_requests_running{engine=\"0\",model_name=\"org/m\"} 12.0\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        "vllm:num_requests_waiting{engine=\"0\",model_name=\"org/m\"} 3.0\n"
        "vllm:num_requests_waiting{engine=\"1\",model_name=\"org/m\"} 2.0\n"
        "vllm:num_requests_waiting_by_reason{engine=\"0\",reason=\"capacity\"} 40.0\n"
        "vllm:gpu_cache_usage_perc{engine=\"0\",model_name=\"org/m\"} 0.25\n"
        "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"a } \\\" b\"} 0.5\n"
        "vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"org/m\"} 0.125\n"
        "vllm:prompt_tokens_total{engine=\"0\",model_name=\"org/m\"} 1.234e+06\n";
    auto figures = parse_metrics(vllm);
    CHECK(figures.queued == 5u);
    CHECK(figures.kv_cache_usage == 0.5);

    const std::string llama =
        "# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 = 100 percent usage.\r\n"
        "# TYPE llamacpp:kv_cache_usage_ratio gauge\r\n"
        "llamacpp:kv_cache_usage_ratio 0.0625\r\n"
        "# HELP llamacpp:requests_processing Number of requests processing.\r\n"
        "llamacpp:requests_processing 4\r\n"
        "# HELP llamacpp:requests_deferred Number of requests deferred.\r\n"
        "llamacpp:requests_deferred 7 1712345678000\r\n";
    figures = parse_metrics(llama);
    CHECK(figures.queued == 7u);
    CHECK(figures.kv_cache_usage == 0.0625);

    // Out-of-range, non-finite and malformed values; other servers' metrics.
    figures = parse_metrics("vllm:kv_cache_usage_perc 1.5\nvllm:num_requests_waiting -2\n");
    CHECK(figures.kv_cache_usage == 1.0);
    CHECK(figures.queued == 0u);
    figures = parse_metrics("vllm:kv_cache_usage_perc NaN\nvllm:num_requests_waiting +Inf\n"
                            "vllm:num_requests_waiting{engine=\"0\" 3\nvllm:num_requests_waiting three\n");
    CHECK_FALSE(figures.kv_cache_usage);
    CHECK_FALSE(figures.queued);
    figures = parse_metrics("# TYPE dpengine_rank_in_flight gauge\ndpengine_rank_in_flight{rank=\"0\"} 1\n");
    CHECK_FALSE(figures.kv_cache_usage);
    CHECK_FALSE(figures.queued);
    CHECK_FALSE(parse_metrics("").queued);
}

TEST_CASE("load: llama-server's /slots", "[http]") {
    auto use = parse_slots(R"([{"id":0,"is_processing":true,"n_ctx":4096},{"id":1,"is_processing":false},
                               {"id":2,"is_processing":true},{"id":3,"is_processing":false}])");
    REQUIRE(use);
    CHECK(use->slots == 4);
    CHECK(use->busy == 2);
    CHECK(use->share() == 0.5);
    // Older llama-server: "state" 0 is idle.
    use = parse_slots(R"([{"id":0,"state":1},{"id":1,"state":0},{"id":2,"state":0},{"id":3,"state":0}])");
    REQUIRE(use);
    CHECK(use->share() == 0.25);
    use = parse_slots("[]");
    REQUIRE(use);
    CHECK(use->share() == 0.0);
    CHECK_FALSE(parse_slots(R"({"error":{"code":501,"message":"This server does not support slots endpoint."}})"));
    CHECK_FALSE(parse_slots("[1, 2]"));
    CHECK_FALSE(parse_slots("Not Found"));
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
