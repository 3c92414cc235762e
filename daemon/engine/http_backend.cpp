#include "http_backend.hpp"

#include "child_process.hpp"
#include "core/exit_codes.hpp"
#include "core/log.hpp"
#include "core/quiet_thread.hpp"
#include "core/placeholders.hpp"
#include "openai_stream.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <netinet/in.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

extern char** environ;

namespace dpengine::engine {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// Health checks: while starting, often (the first answer ends the wait); while serving, every
// few seconds, and only several failures in a row count (a busy server may answer one late).
constexpr auto start_probe_interval = std::chrono::milliseconds(250);
constexpr auto start_probe_timeout = std::chrono::seconds(2);
constexpr auto serving_probe_interval = std::chrono::seconds(5);
constexpr auto serving_probe_timeout = std::chrono::seconds(10);
constexpr int serving_probe_failures = 3;
// Largest error body of a refused request kept for the log.
constexpr size_t error_body_limit = 64 << 10;
constexpr size_t output_line_limit = 4096;
// How long a lost connection waits for the server's exit to be noticed before its request is
// ended on its own (see connection_lost()).
constexpr auto connection_loss_grace = std::chrono::seconds(2);
// How long a stopping server may take to exit after SIGTERM.
constexpr auto stop_grace = std::chrono::seconds(5);

// The service manager's messages to the daemon itself: a server must not answer them (or
// send READY=1 in the daemon's name).
constexpr std::string_view service_manager_variables[] = {"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC",
                                                          "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"};

const std::string waiting_phase = "waiting for the backend's health check";

std::string join(const std::vector<std::string>& words) {
    std::string out;
    for (const auto& w : words) {
        if (!out.empty()) out += ' ';
        bool plain = !w.empty() && w.find_first_of(" \t\n'\"\\$") == std::string::npos;
        out += plain ? w : "'" + w + "'";
    }
    return out;
}

std::vector<std::string> split_list(std::string_view text) {
    std::vector<std::string> out;
    while (true) {
        size_t comma = text.find(',');
        out.emplace_back(text.substr(0, comma));
        if (comma == std::string_view::npos) return out;
        text.remove_prefix(comma + 1);
    }
}

// A port that was free on 127.0.0.1 a moment ago. The server binds it soon after; another
// process taking it in between makes the server fail to start, which the rank reports.
Result<uint16_t> free_loopback_port() {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return Error{std::string("socket: ") + std::strerror(errno)};
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        int e = errno;
        ::close(fd);
        return Error{std::string("cannot find a free loopback port: ") + std::strerror(e)};
    }
    ::close(fd);
    return static_cast<uint16_t>(ntohs(addr.sin_port));
}

class HttpEngine;

// One forwarded request: its own loopback connection, closed when it ends or is aborted.
struct Upstream : std::enable_shared_from_this<Upstream> {
    Upstream(asio::io_context& io, uint64_t key, uint64_t id) : key(key), id(id), stream(io) {}
    uint64_t key;  // the engine's own number: a head's ids may repeat after it restarts
    uint64_t id;   // the head's, for messages
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    http::request<http::string_body> request;
    std::optional<http::response_parser<http::string_body>> parser;
    SseParser sse;
    std::vector<std::string> events;
    uint32_t tokens = 0;  // tokens reported so far (one per chunk with text)
    std::string finish_reason;
    std::optional<uint32_t> prompt_tokens;
    std::optional<uint32_t> completion_tokens;
    bool ended = false;
};

// One health check: GET health_path on a fresh connection, bounded by a timeout.
struct Probe {
    explicit Probe(asio::io_context& io) : stream(io) {}
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    http::request<http::empty_body> request;
    http::response<http::string_body> response;
};

// A pipe from the server's stdout or stderr, forwarded line by line to the rank's log.
struct OutputPipe {
    OutputPipe(asio::io_context& io, int fd) : pipe(io, fd) {}
    asio::posix::stream_descriptor pipe;
    std::array<char, 4096> chunk{};
    std::string line;
};

class HttpEngine final : public Engine {
public:
    HttpEngine(const wire::EngineConfig& config, const RankIdentity& identity, LaunchPlan plan, uint16_t port,
               ChildProcess child)
        : config_(config),
          identity_(identity),
          plan_(std::move(plan)),
          endpoint_(asio::ip::address_v4::loopback(), port),
          child_(std::move(child)),
          work_(asio::make_work_guard(io_)),
          child_watch_(io_, ::dup(child_.pidfd())),
          stdout_(io_, child_.take_stdout()),
          stderr_(io_, child_.take_stderr()),
          probe_timer_(io_),
          started_at_(Clock::now()) {
        wakeup_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        state_.phase = EngineState::Phase::starting;
        log::info("started the backend server (pid {}, GPU {}, port {}): {}", child_.pid(), plan_.gpu,
                  endpoint_.port(), plan_.command_line);
        watch_child();
        forward_output(stdout_);
        forward_output(stderr_);
        schedule_probe(std::chrono::milliseconds(0));
        thread_ = start_quiet_thread<std::thread>([this] { io_.run(); });
    }

    // The server gets SIGTERM and up to stop_grace to exit, while the I/O thread still
    // forwards what it logs on the way out; then whatever is left of its group gets SIGKILL.
    ~HttpEngine() override {
        asio::post(io_, [this] { shut_down(); });
        thread_.join();
        child_.stop(std::chrono::seconds(1));
        if (wakeup_fd_ >= 0) ::close(wakeup_fd_);
    }

    std::string device() const override {
        std::string program = plan_.argv.front().substr(plan_.argv.front().rfind('/') + 1);
        return "GPU " + plan_.gpu + " via " + program + " on 127.0.0.1:" + std::to_string(endpoint_.port());
    }
    uint32_t capacity() const override { return config_.max_concurrency; }

    EngineState state() override {
        std::lock_guard lock(mutex_);
        return state_;
    }

    void add(const wire::Add& request) override {
        queue_.push_back(request);
        forward_queued();
    }

    void abort(uint64_t id) override {
        if (auto it = active_.find(id); it != active_.end()) {
            uint64_t key = it->second;
            keys_.erase(key);
            active_.erase(it);
            asio::post(io_, [this, key] { cancel(key); });
            forward_queued();
            return;
        }
        std::erase_if(queue_, [id](const wire::Add& a) { return a.id == id; });
    }

    void abort_all() override {
        for (const auto& [id, key] : active_) asio::post(io_, [this, key = key] { cancel(key); });
        active_.clear();
        keys_.clear();
        queue_.clear();
    }

    bool has_work() const override {
        std::lock_guard lock(mutex_);
        return !pending_.empty();
    }

    void step(wire::Outputs& out) override {
        std::vector<wire::Output> arrived;
        {
            std::lock_guard lock(mutex_);
            arrived.swap(pending_);
            pending_index_.clear();
        }
        for (auto& o : arrived) {
            auto key = keys_.find(o.id);
            if (key == keys_.end()) continue;  // aborted while its output was on the way
            o.id = key->second;
            if (!o.finish.empty()) {
                active_.erase(o.id);
                keys_.erase(key);
            }
            out.items.push_back(std::move(o));
        }
        if (!arrived.empty()) ++steps_;
        forward_queued();
        out.running = running();
        out.waiting = waiting();
    }

    uint32_t running() const override { return static_cast<uint32_t>(active_.size()); }
    uint32_t waiting() const override { return static_cast<uint32_t>(queue_.size()); }
    uint64_t steps() const override { return steps_; }

    int wakeup_fd() const override { return wakeup_fd_; }
    void clear_wakeup() override {
        uint64_t n;
        (void)!::read(wakeup_fd_, &n, sizeof n);
    }

private:
    // ---- the rank's loop thread ----

    void forward_queued() {
        while (active_.size() < std::max(1u, config_.max_concurrency) && !queue_.empty()) {
            wire::Add request = std::move(queue_.front());
            queue_.pop_front();
            uint64_t key = ++last_key_;
            active_[request.id] = key;
            keys_[key] = request.id;
            asio::post(io_, [this, key, request = std::move(request)] { start_upstream(key, request); });
        }
    }

    // ---- both threads ----

    void wake() {
        uint64_t one = 1;
        (void)!::write(wakeup_fd_, &one, sizeof one);
    }

    // Queues output for the loop (under the upstream's key; step() maps it back to the head's
    // id). Pieces for a request not yet taken are merged.
    void deliver(uint64_t id, std::string_view text, uint32_t new_tokens, std::string_view finish,
                 uint32_t prompt_tokens) {
        {
            std::lock_guard lock(mutex_);
            auto [it, fresh] = pending_index_.try_emplace(id, pending_.size());
            if (fresh) {
                wire::Output& o = pending_.emplace_back();
                o.id = id;
            }
            wire::Output& o = pending_[it->second];
            o.text += text;
            o.new_tokens += new_tokens;
            if (!finish.empty()) o.finish = finish;
            if (prompt_tokens) o.prompt_tokens = prompt_tokens;
        }
        wake();
    }

    void fail(int exit_code, const std::string& reason_code, const std::string& message) {
        {
            std::lock_guard lock(mutex_);
            if (state_.phase == EngineState::Phase::failed) return;
            state_ = {EngineState::Phase::failed, reason_code, message, exit_code};
        }
        wake();
    }

    bool starting() {
        std::lock_guard lock(mutex_);
        return state_.phase == EngineState::Phase::starting;
    }

    // ---- the I/O thread ----

    void shut_down() {
        stopping_ = true;
        for (auto& [key, up] : upstreams_) close(*up);
        upstreams_.clear();
        if (child_.reap()) return io_.stop();
        child_.signal_group(SIGTERM);
        probe_timer_.expires_after(stop_grace);
        probe_timer_.async_wait([this](const boost::system::error_code&) { io_.stop(); });
    }

    void watch_child() {
        child_watch_.async_wait(asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
            if (ec) return;
            auto status = child_.reap();
            if (!status) return watch_child();
            if (stopping_) return io_.stop();
            std::string how = describe_wait_status(*status);
            if (starting()) {
                fail(exit_code::config, "backend-exited",
                     fmt::format("the backend server (pid {}) {}; phase: {}; command: {}", child_.pid(), how,
                                 waiting_phase, plan_.command_line));
            } else {
                fail(exit_code::failure, "backend-exited",
                     fmt::format("the backend server (pid {}) {}; command: {}", child_.pid(), how, plan_.command_line));
            }
        });
    }

    void forward_output(OutputPipe& out) {
        out.pipe.async_read_some(asio::buffer(out.chunk), [this, &out](const boost::system::error_code& ec, size_t n) {
            for (size_t i = 0; i < n; ++i) {
                char c = out.chunk[i];
                if (c == '\n' || out.line.size() >= output_line_limit) {
                    log_output(out.line);
                    out.line.clear();
                    if (c == '\n') continue;
                }
                out.line += c;
            }
            if (ec) {
                if (!out.line.empty()) log_output(out.line);
                out.line.clear();
                return;
            }
            forward_output(out);
        });
    }

    void log_output(std::string_view line) {
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        log::info("[rank {} server] {}", identity_.rank, line);
    }

    void schedule_probe(Clock::duration after) {
        probe_timer_.expires_after(after);
        probe_timer_.async_wait([this](const boost::system::error_code& ec) {
            if (!ec && !stopping_) probe();
        });
    }

    void probe() {
        auto p = std::make_shared<Probe>(io_);
        bool start = starting();
        p->stream.expires_after(start ? start_probe_timeout : serving_probe_timeout);
        p->request = {http::verb::get, config_.health_path, 11};
        p->request.set(http::field::host, "127.0.0.1:" + std::to_string(endpoint_.port()));
        p->request.set(http::field::connection, "close");
        p->stream.async_connect(endpoint_, [this, p](const boost::system::error_code& ec) {
            if (ec) return probed(false, "cannot connect: " + ec.message());
            http::async_write(p->stream, p->request, [this, p](const boost::system::error_code& ec, size_t) {
                if (ec) return probed(false, "cannot send the request: " + ec.message());
                http::async_read(p->stream, p->buffer, p->response, [this, p](const boost::system::error_code& ec, size_t) {
                    if (ec) return probed(false, "no answer: " + ec.message());
                    int status = p->response.result_int();
                    probed(status == 200, "HTTP " + std::to_string(status));
                });
            });
        });
    }

    void probed(bool healthy, const std::string& detail) {
        if (stopping_) return;
        std::string url = "GET http://127.0.0.1:" + std::to_string(endpoint_.port()) + config_.health_path;
        if (starting()) {
            if (healthy) {
                {
                    std::lock_guard lock(mutex_);
                    if (state_.phase == EngineState::Phase::starting) state_.phase = EngineState::Phase::ready;
                }
                log::info("the backend server (pid {}) is healthy after {:.1f} s", child_.pid(),
                          std::chrono::duration<double>(Clock::now() - started_at_).count());
                wake();
                return schedule_probe(serving_probe_interval);
            }
            if (Clock::now() - started_at_ > std::chrono::duration<double>(config_.ready_timeout)) {
                return fail(exit_code::config, "backend-unhealthy",
                            fmt::format("the backend server (pid {}) did not pass its health check within {} s "
                                        "(engine.ready_timeout); phase: {}; last check: {}: {}; command: {}",
                                        child_.pid(), config_.ready_timeout, waiting_phase, url, detail,
                                        plan_.command_line));
            }
            return schedule_probe(start_probe_interval);
        }
        if (healthy) {
            probe_failures_ = 0;
        } else if (++probe_failures_ >= serving_probe_failures) {
            return fail(exit_code::failure, "backend-unhealthy",
                        fmt::format("the backend server (pid {}) failed {} health checks in a row; last: {}: {}",
                                    child_.pid(), probe_failures_, url, detail));
        } else {
            log::warning("the backend server's health check failed ({}: {}); {} of {} before the rank gives up", url,
                         detail, probe_failures_, serving_probe_failures);
        }
        schedule_probe(serving_probe_interval);
    }

    void start_upstream(uint64_t key, const wire::Add& add) {
        auto up = std::make_shared<Upstream>(io_, key, add.id);
        upstreams_[key] = up;
        up->request = {http::verb::post, "/v1/completions", 11};
        up->request.set(http::field::host, "127.0.0.1:" + std::to_string(endpoint_.port()));
        up->request.set(http::field::content_type, "application/json");
        up->request.set(http::field::accept, "text/event-stream");
        up->request.body() = completion_request_body(add, config_.model);
        up->request.prepare_payload();
        up->stream.async_connect(endpoint_, [this, up](const boost::system::error_code& ec) {
            if (ec) return connection_lost(*up, "cannot connect: " + ec.message());
            http::async_write(up->stream, up->request, [this, up](const boost::system::error_code& ec, size_t) {
                if (ec) return connection_lost(*up, "cannot send the request: " + ec.message());
                up->parser.emplace();
                up->parser->body_limit(boost::none);  // the body is consumed as it arrives
                http::async_read_header(up->stream, up->buffer, *up->parser,
                                        [this, up](const boost::system::error_code& ec, size_t) {
                                            if (ec) return connection_lost(*up, "no answer: " + ec.message());
                                            if (up->parser->get().result() != http::status::ok) return read_refusal(up);
                                            read_stream(up);
                                        });
            });
        });
    }

    // A non-200 answer: read its body (bounded) for the log, then end the request.
    void read_refusal(const std::shared_ptr<Upstream>& up) {
        up->parser->body_limit(error_body_limit);
        http::async_read(up->stream, up->buffer, *up->parser, [this, up](const boost::system::error_code&, size_t) {
            if (up->ended) return;
            const auto& response = up->parser->get();
            upstream_failed(*up, "HTTP " + std::to_string(response.result_int()) + ": " +
                                     response.body().substr(0, 500));
        });
    }

    void read_stream(const std::shared_ptr<Upstream>& up) {
        http::async_read_some(up->stream, up->buffer, *up->parser, [this, up](const boost::system::error_code& ec, size_t) {
            if (up->ended) return;
            std::string& body = up->parser->get().body();
            bool parsed = up->sse.feed(body, up->events);
            body.clear();
            if (!parsed) return upstream_failed(*up, "an event larger than the stream parser accepts");
            for (auto& data : up->events) {
                if (up->ended) break;
                on_event(*up, data);
            }
            up->events.clear();
            if (up->ended) return;
            if (ec || up->parser->is_done()) {
                // The stream ended without [DONE]: fine if the choice had finished.
                if (!up->finish_reason.empty()) return complete(*up);
                if (ec) return connection_lost(*up, "the stream broke off: " + ec.message());
                return upstream_failed(*up, "the stream ended before the completion finished");
            }
            read_stream(up);
        });
    }

    void on_event(Upstream& up, std::string_view data) {
        if (data == sse_done) return complete(up);
        auto chunk = parse_completion_chunk(data);
        if (!chunk) return upstream_failed(up, chunk.error().message);
        if (!chunk->error.empty()) return upstream_failed(up, "the server reported: " + chunk->error);
        if (chunk->prompt_tokens) up.prompt_tokens = chunk->prompt_tokens;
        if (chunk->completion_tokens) up.completion_tokens = chunk->completion_tokens;
        if (!chunk->finish_reason.empty()) up.finish_reason = chunk->finish_reason;
        if (!chunk->text.empty()) {
            ++up.tokens;
            deliver(up.key, chunk->text, 1, "", 0);
        }
    }

    // The end of a request: its finish reason, and the token counts the usage corrects.
    void complete(Upstream& up) {
        std::string finish = up.finish_reason == "length" ? "length" : "stop";
        if (up.finish_reason.empty()) {
            return upstream_failed(up, "the stream ended without a finish_reason");
        }
        uint32_t extra = up.completion_tokens && *up.completion_tokens > up.tokens ? *up.completion_tokens - up.tokens : 0;
        deliver(up.key, "", extra, finish, up.prompt_tokens.value_or(0));
        end(up);
    }

    // The connection to the server failed. Most often the server is dying, and then the
    // rank fails and the head handles the request as on any lost rank (retrying it if nothing
    // was produced yet); only if the server is still running a moment later does the request
    // end here.
    void connection_lost(Upstream& up, const std::string& why) {
        if (up.ended) return;
        up.ended = true;
        close(up);
        auto timer = std::make_shared<asio::steady_timer>(io_, connection_loss_grace);
        timer->async_wait([this, timer, key = up.key, id = up.id, why](const boost::system::error_code& ec) {
            upstreams_.erase(key);
            if (ec || stopping_ || state().phase == EngineState::Phase::failed) return;
            log::warning("request {}: the backend server did not complete it: {}", id, why);
            deliver(key, "", 0, "abort", 0);
        });
    }

    // The server could not serve the request: it ends ("abort") and the log says why.
    void upstream_failed(Upstream& up, const std::string& why) {
        if (up.ended) return;
        log::warning("request {}: the backend server did not complete it: {}", up.id, why);
        deliver(up.key, "", 0, "abort", up.prompt_tokens.value_or(0));
        end(up);
    }

    void end(Upstream& up) {
        up.ended = true;
        close(up);
        upstreams_.erase(up.key);
    }

    void close(Upstream& up) {
        up.ended = true;
        boost::system::error_code ignored;
        up.stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
        up.stream.close();
    }

    // The head aborted the request: closing the connection tells the server to stop it.
    void cancel(uint64_t key) {
        auto it = upstreams_.find(key);
        if (it == upstreams_.end()) return;
        close(*it->second);
        upstreams_.erase(it);
    }

    wire::EngineConfig config_;
    RankIdentity identity_;
    LaunchPlan plan_;
    tcp::endpoint endpoint_;
    ChildProcess child_;

    // Shared between the loop and the I/O thread.
    mutable std::mutex mutex_;
    EngineState state_;
    std::vector<wire::Output> pending_;
    std::unordered_map<uint64_t, size_t> pending_index_;
    int wakeup_fd_ = -1;

    // The loop thread's.
    std::deque<wire::Add> queue_;
    std::unordered_map<uint64_t, uint64_t> active_;  // the head's id → the upstream's key
    std::unordered_map<uint64_t, uint64_t> keys_;    // and back
    uint64_t last_key_ = 0;
    uint64_t steps_ = 0;

    // The I/O thread's.
    asio::io_context io_;
    asio::executor_work_guard<asio::io_context::executor_type> work_;
    asio::posix::stream_descriptor child_watch_;
    OutputPipe stdout_;
    OutputPipe stderr_;
    asio::steady_timer probe_timer_;
    std::unordered_map<uint64_t, std::shared_ptr<Upstream>> upstreams_;
    int probe_failures_ = 0;
    bool stopping_ = false;
    Clock::time_point started_at_;
    std::thread thread_;
};

}  // namespace

Result<LaunchPlan> plan_launch(const wire::EngineConfig& config, const RankIdentity& identity, uint16_t port,
                               const std::vector<std::string>& inherited) {
    if (config.command.empty() || config.command.front().empty())
        return Error{"engine.command is empty; the http backend needs the server's command line", "config"};
    LaunchPlan plan;
    std::map<std::string, std::string> env;
    for (const auto& entry : inherited) {
        size_t eq = entry.find('=');
        if (eq == std::string::npos || eq == 0) continue;
        std::string name = entry.substr(0, eq);
        if (std::find(std::begin(service_manager_variables), std::end(service_manager_variables), name) !=
            std::end(service_manager_variables))
            continue;
        env.try_emplace(std::move(name), entry.substr(eq + 1));
    }
    plan.gpu = std::to_string(identity.local_rank);
    if (auto it = env.find("CUDA_VISIBLE_DEVICES"); it != env.end() && !it->second.empty()) {
        auto gpus = split_list(it->second);
        if (identity.local_rank >= gpus.size())
            return Error{"local rank " + std::to_string(identity.local_rank) + " has no GPU: CUDA_VISIBLE_DEVICES of "
                             "dpengined lists only " + std::to_string(gpus.size()) + " (" + it->second +
                             "); list more GPUs, or lower data_parallel.size_local",
                         "config"};
        plan.gpu = gpus[identity.local_rank];
    }
    PlaceholderValues values;
    values.port = port;
    values.gpu = plan.gpu;
    values.rank = identity.rank;
    values.local_rank = identity.local_rank;
    values.model = config.model;
    for (size_t i = 0; i < config.command.size(); ++i) {
        auto word = expand_placeholders(config.command[i], values);
        if (!word) return Error{"engine.command[" + std::to_string(i) + "]: " + word.error().message, "config"};
        plan.argv.push_back(std::move(word).value());
    }
    env["CUDA_VISIBLE_DEVICES"] = plan.gpu;
    for (const auto& [name, value] : config.env) {
        auto expanded = expand_placeholders(value, values);
        if (!expanded) return Error{"engine.env." + name + ": " + expanded.error().message, "config"};
        env[name] = std::move(expanded).value();
    }
    plan.gpu = env["CUDA_VISIBLE_DEVICES"];
    for (const auto& [name, value] : env) plan.environment.push_back(name + "=" + value);
    plan.command_line = join(plan.argv);
    return plan;
}

Result<std::unique_ptr<Engine>> make_http_engine(const wire::EngineConfig& config, const RankIdentity& identity) {
    auto port = free_loopback_port();
    if (!port) return port.error();
    std::vector<std::string> inherited;
    for (char** e = environ; e && *e; ++e) inherited.emplace_back(*e);
    auto plan = plan_launch(config, identity, *port, inherited);
    if (!plan) return plan.error();
    auto child = ChildProcess::start(plan->argv, plan->environment);
    if (!child) {
        return Error{"cannot start the backend server (phase: starting the backend): " + child.error().message +
                         "; command: " + plan->command_line,
                     "config"};
    }
    return std::unique_ptr<Engine>(
        std::make_unique<HttpEngine>(config, identity, std::move(plan).value(), *port, std::move(child).value()));
}

}  // namespace dpengine::engine
