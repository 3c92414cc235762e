// The pure parts of the http backend: placeholder expansion, the launch plan, the cutting of
// the server's event stream into whole events in its own bytes (split anywhere, every line
// ending), the usage it counts tokens by, and the load figures of vLLM's and llama-server's
// /metrics and llama-server's /slots. And the engine's upstream connections against a small
// HTTP/1.1 server of the test's own: kept alive and reused, dropped when the server closes
// them or its response cannot leave them reusable, and closed at once by an abort.
#include "core/placeholders.hpp"
#include "engine/child_process.hpp"
#include "engine/http_backend.hpp"
#include "engine/openai_stream.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <arpa/inet.h>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <netinet/in.h>
#include <poll.h>
#include <set>
#include <sys/socket.h>
#include <thread>
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

// The upstream for the engine tests: blocking sockets, a thread per connection. GETs (health
// checks, load figures) get an answer and "Connection: close". A POST gets the body
// "connection C request R" (C: the connection's number, counting every accepted one; R: the
// POST's number on it), framed and followed as its path says:
//   /v1/completions      Content-Length; the connection stays open
//   /stream              a chunked text/event-stream of two events; stays open
//   /close-after         Content-Length, and then the server closes the connection (as an
//                        idle timeout would), without saying so
//   /drop-next           Content-Length; the next request on the connection is read and the
//                        connection closed without an answer (an idle close that crossed it)
//   /connection-close    Content-Length and "Connection: close"; closed
//   /eof-body            no Content-Length, no chunks: the body ends when the server closes
//   /hold                no answer; waits for the client to close the connection
class TestServer {
public:
    explicit TestServer(uint16_t port) {
        listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(listen_ >= 0);
        int one = 1;
        ::setsockopt(listen_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        addr.sin_port = htons(port);
        REQUIRE(::bind(listen_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(listen_, 64) == 0);
        acceptor_ = std::thread([this] { accept_loop(); });
    }
    ~TestServer() { stop(); }

    void stop() {
        if (!acceptor_.joinable()) return;
        ::shutdown(listen_, SHUT_RDWR);
        acceptor_.join();
        ::close(listen_);
        {
            std::lock_guard lock(mutex_);
            for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
        }
        for (auto& t : workers_) t.join();
    }

    int posts() const { return count(posts_); }
    int dropped() const { return count(dropped_); }
    int clients_gone() const { return count(clients_gone_); }
    // Connections that carried at least one POST.
    int post_connections() const {
        std::lock_guard lock(mutex_);
        return static_cast<int>(post_connections_.size());
    }

private:
    int count(const int& figure) const {
        std::lock_guard lock(mutex_);
        return figure;
    }

    void accept_loop() {
        while (true) {
            int fd = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED) continue;
                return;
            }
            int number;
            {
                std::lock_guard lock(mutex_);
                number = ++accepted_;
                open_.insert(fd);
            }
            workers_.emplace_back([this, fd, number] {
                serve(fd, number);
                std::lock_guard lock(mutex_);
                open_.erase(fd);
                ::close(fd);
            });
        }
    }

    static bool read_more(int fd, std::string& in) {
        char buf[4096];
        ssize_t n = ::recv(fd, buf, sizeof buf, 0);
        if (n <= 0) return false;
        in.append(buf, static_cast<size_t>(n));
        return true;
    }

    static void write_all(int fd, std::string_view out) {
        while (!out.empty()) {
            ssize_t n = ::send(fd, out.data(), out.size(), MSG_NOSIGNAL);
            if (n <= 0) return;
            out.remove_prefix(static_cast<size_t>(n));
        }
    }

    static std::string answer(std::string_view extra_headers, std::string_view body) {
        return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
            "\r\n" + std::string(extra_headers) + "\r\n" + std::string(body);
    }

    static std::string chunk(std::string_view data) {
        char size[32];
        std::snprintf(size, sizeof size, "%zx\r\n", data.size());
        return size + std::string(data) + "\r\n";
    }

    void serve(int fd, int number) {
        std::string in;
        int requests = 0;
        bool drop_next = false;
        while (true) {
            size_t head_end;
            while ((head_end = in.find("\r\n\r\n")) == std::string::npos) {
                if (!read_more(fd, in)) return;
            }
            std::string head = in.substr(0, head_end);
            size_t length = 0;
            if (size_t at = head.find("Content-Length: "); at != std::string::npos)
                length = std::strtoul(head.c_str() + at + 16, nullptr, 10);
            while (in.size() < head_end + 4 + length) {
                if (!read_more(fd, in)) return;
            }
            in.erase(0, head_end + 4 + length);
            std::string method = head.substr(0, head.find(' '));
            std::string path = head.substr(method.size() + 1, head.find(' ', method.size() + 1) - method.size() - 1);
            if (method != "POST") {
                std::string body = path == "/health" ? "ok" : "";
                std::string status = path == "/health" ? "200 OK" : "404 Not Found";
                write_all(fd,
                          "HTTP/1.1 " + status + "\r\nContent-Length: " + std::to_string(body.size()) +
                              "\r\nConnection: close\r\n\r\n" + body);
                return;
            }
            ++requests;
            {
                std::lock_guard lock(mutex_);
                ++posts_;
                post_connections_.insert(number);
                if (drop_next) ++dropped_;
            }
            if (drop_next) return;
            std::string body = "connection " + std::to_string(number) + " request " + std::to_string(requests);
            if (path == "/v1/completions") {
                write_all(fd, answer("", body));
            } else if (path == "/stream") {
                write_all(fd,
                          "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" +
                              chunk("data: " + body + "\n\n") + chunk("data: [DONE]\n\n") + "0\r\n\r\n");
            } else if (path == "/close-after") {
                write_all(fd, answer("", body));
                return;
            } else if (path == "/drop-next") {
                write_all(fd, answer("", body));
                drop_next = true;
            } else if (path == "/connection-close") {
                write_all(fd, answer("Connection: close\r\n", body));
                return;
            } else if (path == "/eof-body") {
                write_all(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body);
                return;
            } else if (path == "/hold") {
                while (read_more(fd, in)) {
                }
                std::lock_guard lock(mutex_);
                ++clients_gone_;
                return;
            } else {
                write_all(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            }
        }
    }

    int listen_ = -1;
    std::thread acceptor_;
    std::vector<std::thread> workers_;  // the acceptor's until it is joined
    mutable std::mutex mutex_;
    std::set<int> open_;
    int accepted_ = 0;
    int posts_ = 0;
    int dropped_ = 0;
    int clients_gone_ = 0;
    std::set<int> post_connections_;
};

struct Answer {
    uint32_t status = 0;
    std::string content_type;
    std::string data;
    bool done = false;
};

// Drives ENGINE as the rank's loop does (poll its wakeup descriptor, step while it has work)
// until request ID's response is complete, or 10 s.
Answer collect(Engine& engine, uint64_t id) {
    Answer a;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!a.done && std::chrono::steady_clock::now() < deadline) {
        pollfd p{engine.wakeup_fd(), POLLIN, 0};
        ::poll(&p, 1, 100);
        engine.clear_wakeup();
        if (!engine.has_work()) continue;
        wire::Outputs out;
        engine.step(out);
        for (auto& o : out.items) {
            REQUIRE(o.id == id);
            if (o.status) a.status = o.status;
            if (!o.content_type.empty()) a.content_type = o.content_type;
            a.data += o.data;
            a.done = o.done;
        }
    }
    return a;
}

Answer ask(Engine& engine, uint64_t id, const std::string& path) {
    wire::Request request;
    request.id = id;
    request.path = path;
    request.body = "{}";
    engine.add(request);
    return collect(engine, id);
}

// The connection number in a TestServer answer.
int connection_of(const Answer& a) {
    size_t at = a.data.find("connection ");
    return at == std::string::npos ? -1 : std::atoi(a.data.c_str() + at + 11);
}

template <typename F>
bool wait_for(F condition, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!condition()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
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
    figures = parse_metrics(
        "vllm:kv_cache_usage_perc NaN\nvllm:num_requests_waiting +Inf\n"
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
    auto child =
        ChildProcess::start({"sh", "-c", "trap '' TERM; sleep 60 & echo started; wait"}, {"PATH=/usr/bin:/bin"});
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

TEST_CASE("sse: the size limit counts every byte of an event", "[http]") {
    // 64 bytes are allowed, the 65th is not, whether it is line content or a line end.
    std::string at_limit = "data: " + std::string(56, 'x') + "\n\n";  // 64 bytes
    REQUIRE(at_limit.size() == 64);
    for (size_t cut = 0; cut <= at_limit.size(); cut += 7) {
        SseSplitter splitter(64);
        std::vector<std::string> events;
        REQUIRE(splitter.feed(std::string_view(at_limit).substr(0, cut), events));
        REQUIRE(splitter.feed(std::string_view(at_limit).substr(cut), events));
        CHECK(events == std::vector<std::string>{at_limit});
    }
    SseSplitter content(64);
    std::vector<std::string> events;
    CHECK_FALSE(content.feed("data: " + std::string(59, 'x'), events));
    SseSplitter line_end(64);
    CHECK_FALSE(line_end.feed("data: " + std::string(57, 'x') + "\n\n", events));
    // The LF of a CRLF that ends an event belongs to it beyond the limit too.
    SseSplitter crlf(64);
    events.clear();
    REQUIRE(crlf.feed("data: " + std::string(56, 'x') + "\r\r\n", events));
    CHECK(events == std::vector<std::string>{"data: " + std::string(56, 'x') + "\r\r\n"});
}

TEST_CASE("http engine: one upstream connection serves request after request", "[http]") {
    char dir_template[] = "/tmp/dpe-http-unit-XXXXXX";
    REQUIRE(::mkdtemp(dir_template));
    std::filesystem::path dir = dir_template;
    wire::EngineConfig config;
    config.backend = "http";
    config.model = "m";
    // The "server" only tells the test its port and waits; the test serves that port itself.
    config.command = {"/bin/sh", "-c",
                      "echo {port} > " + (dir / "port.tmp").string() + " && mv " + (dir / "port.tmp").string() + " " +
                          (dir / "port").string() + " && exec sleep 120"};
    config.health_path = "/health";
    config.health_interval = 0.5;
    config.health_failures = 3;
    config.ready_timeout = 20;
    config.max_concurrency = 2;
    auto made = make_http_engine(config, RankIdentity{0, 0});
    REQUIRE(made.ok());
    std::unique_ptr<Engine> engine = std::move(made).value();

    REQUIRE(wait_for([&] { return std::filesystem::exists(dir / "port"); }));
    uint16_t port = 0;
    std::ifstream(dir / "port") >> port;
    REQUIRE(port != 0);
    TestServer server(port);
    REQUIRE(wait_for([&] { return engine->state().phase == EngineState::Phase::ready; }));

    uint64_t id = 0;
    // Sequential requests, streamed or not, share one connection.
    Answer first = ask(*engine, ++id, "/v1/completions");
    REQUIRE(first.done);
    CHECK(first.status == 200);
    CHECK(first.content_type == "text/plain");
    int connection = connection_of(first);
    CHECK_THAT(first.data, Catch::Equals("connection " + std::to_string(connection) + " request 1"));
    for (int i = 2; i <= 4; ++i) {
        Answer again = ask(*engine, ++id, "/v1/completions");
        CHECK(again.status == 200);
        CHECK(again.data == "connection " + std::to_string(connection) + " request " + std::to_string(i));
    }
    Answer stream = ask(*engine, ++id, "/stream");
    CHECK(stream.status == 200);
    CHECK(stream.content_type == "text/event-stream");
    CHECK(stream.data == "data: connection " + std::to_string(connection) + " request 5\n\ndata: [DONE]\n\n");
    CHECK(ask(*engine, ++id, "/v1/completions").data == "connection " + std::to_string(connection) + " request 6");
    CHECK(server.post_connections() == 1);

    // The server closes the idle connection: the next request goes on a new one, and succeeds.
    CHECK(connection_of(ask(*engine, ++id, "/close-after")) == connection);
    Answer after_close = ask(*engine, ++id, "/v1/completions");
    CHECK(after_close.status == 200);
    int second = connection_of(after_close);
    CHECK(second != connection);
    CHECK(after_close.data == "connection " + std::to_string(second) + " request 1");
    // ... also when the request is already on its way: it goes again, once, on a new connection.
    CHECK(connection_of(ask(*engine, ++id, "/drop-next")) == second);
    Answer retried = ask(*engine, ++id, "/v1/completions");
    CHECK(retried.status == 200);
    int third = connection_of(retried);
    CHECK(third != second);
    CHECK(retried.data == "connection " + std::to_string(third) + " request 1");
    CHECK(server.dropped() == 1);
    CHECK(connection_of(ask(*engine, ++id, "/v1/completions")) == third);

    // "Connection: close", and a body that the server's close ends: not reused.
    Answer told = ask(*engine, ++id, "/connection-close");
    CHECK(told.status == 200);
    CHECK(connection_of(told) == third);
    int fourth = connection_of(ask(*engine, ++id, "/eof-body"));
    CHECK(fourth > third);
    int fifth = connection_of(ask(*engine, ++id, "/v1/completions"));
    CHECK(fifth > fourth);

    CHECK(server.posts() == 15);  // one of them twice: the request that /drop-next dropped

    // An abort closes the request's connection at once (here the idle one it took), so that
    // the server stops; the next request gets a new one.
    wire::Request held;
    held.id = ++id;
    held.path = "/hold";
    held.body = "{}";
    engine->add(held);
    REQUIRE(wait_for([&] { return server.posts() == 16; }));
    engine->abort(held.id);
    CHECK(wait_for([&] { return server.clients_gone() == 1; }));
    Answer after_abort = ask(*engine, ++id, "/v1/completions");
    CHECK(after_abort.status == 200);
    CHECK(connection_of(after_abort) > fifth);
    CHECK(server.posts() == 17);

    engine.reset();
    server.stop();
    std::filesystem::remove_all(dir);
}
