#include "http_backend.hpp"

#include "child_process.hpp"
#include "core/api_error.hpp"
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
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
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

// Health checks: while starting, often (the first answer ends the wait); once serving, every
// engine.health_interval with that as the timeout, so that a server that stops answering (a
// SIGSTOP, a deadlock) counts one failure per interval.
constexpr auto start_probe_interval = std::chrono::milliseconds(250);
constexpr auto start_probe_timeout = std::chrono::seconds(2);
// The most body the rank reads of a health check or a load figure's answer (vLLM's /metrics,
// with its histograms, is some hundred KiB).
constexpr size_t fetch_body_limit = 4 << 20;
// Where the server's load figures are (see read_load()).
const std::string metrics_path = "/metrics";
const std::string slots_path = "/slots";
constexpr size_t output_line_limit = 4096;
// How long a lost connection waits for the server's exit to be noticed before its request is
// answered on its own (see connection_lost()).
constexpr auto connection_loss_grace = std::chrono::seconds(2);
// How long a stopping server may take to exit after SIGTERM.
constexpr auto stop_grace = std::chrono::seconds(5);

// The service manager's messages to the daemon itself: a server must not answer them (or
// send READY=1 in the daemon's name).
constexpr std::string_view service_manager_variables[] = {"NOTIFY_SOCKET", "WATCHDOG_PID", "WATCHDOG_USEC",
                                                          "LISTEN_PID",    "LISTEN_FDS",   "LISTEN_FDNAMES"};

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

// A response the parser refused, as opposed to a connection that broke off (which beast's
// parser reports in the same category).
bool malformed(const boost::system::error_code& ec) {
    return ec.category() == http::make_error_code(http::error::end_of_stream).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message;
}

// A load figure's path that the server does not have (vLLM has no /slots; llama-server
// answers 501 for /metrics without --metrics and for /slots with --no-slots).
bool absent(unsigned status) { return status == 404 || status == 501; }

// The rank's own last piece where the server's answer cannot be relayed: an OpenAI error
// response, or, inside a stream the client already has part of, an error event and the
// stream's end (as the head ends a stream whose rank is lost).
wire::Output error_piece(uint64_t key, bool stream_started, const openai::HttpError& error) {
    wire::Output piece;
    piece.id = key;
    piece.done = true;
    if (stream_started) {
        piece.data = openai::stream_error_event(error) + "data: [DONE]\n\n";
    } else {
        piece.status = static_cast<uint32_t>(error.status);
        piece.content_type = "application/json";
        piece.data = openai::error_body(error);
    }
    return piece;
}

openai::HttpError bad_upstream(const std::string& why) {
    return {502, "server_error", "the backend server's response could not be relayed: " + why, "", "bad-upstream"};
}

Clock::duration as_duration(double seconds) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// One forwarded request on a loopback connection of its own while it runs: a fresh one, or an
// idle one from the engine's pool (HTTP/1.1 keep-alive). It goes back to the pool when the
// response was read completely and the server lets it stay open; an abort or any failure
// closes it.
struct Upstream {
    Upstream(asio::io_context& io, uint64_t key, uint64_t id) : key(key), id(id), socket(io) {}
    uint64_t key;  // the engine's own number: a head's ids may repeat after it restarts
    uint64_t id;   // the head's, for messages
    tcp::socket socket;
    beast::flat_buffer buffer;
    http::request<http::string_body> request;
    http::response_parser<http::string_body> parser;
    uint32_t status = 0;
    std::string content_type;
    bool event_stream = false;
    SseSplitter sse;
    std::vector<std::string> events;  // complete events of the last read
    uint32_t tokens = 0;              // completion tokens relayed so far (per the server's usage)
    bool reused = false;              // the connection came from the pool (and may have gone stale)
    bool started = false;             // the first piece (with the status) went out
    bool ended = false;
};

// The answer to one GET of the server: its status (0: none came) and body, or what went wrong.
struct Fetched {
    unsigned status = 0;
    std::string body;
    std::string error;
    std::string detail() const { return status ? "HTTP " + std::to_string(status) : error; }
};

// One GET on a fresh connection, bounded by a timeout: health checks and load figures.
struct Fetch {
    explicit Fetch(asio::io_context& io) : stream(io) {}
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    http::request<http::empty_body> request;
    http::response_parser<http::string_body> parser;
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
          host_("127.0.0.1:" + std::to_string(port)),
          health_interval_(as_duration(config.health_interval)),
          child_(std::move(child)),
          work_(asio::make_work_guard(io_)),
          child_watch_(io_, ::dup(child_.pidfd())),
          stdout_(io_, child_.take_stdout()),
          stderr_(io_, child_.take_stderr()),
          health_timer_(io_),
          started_at_(Clock::now()) {
        wakeup_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        state_.phase = EngineState::Phase::starting;
        log::info("started the backend server (pid {}, GPU {}, port {}): {}", child_.pid(), plan_.gpu, endpoint_.port(),
                  plan_.command_line);
        watch_child();
        forward_output(stdout_);
        forward_output(stderr_);
        schedule_health_check(Clock::now());
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
        return "GPU " + plan_.gpu + " via " + program + " on " + host_;
    }
    uint32_t capacity() const override { return config_.max_concurrency; }

    EngineState state() override {
        std::lock_guard lock(mutex_);
        return state_;
    }

    void add(const wire::Request& request) override {
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
        std::erase_if(queue_, [id](const wire::Request& r) { return r.id == id; });
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
        std::vector<wire::Output> arrived = take_pending();
        for (auto& o : arrived) {
            auto key = keys_.find(o.id);
            if (key == keys_.end()) continue;  // aborted while its output was on the way
            o.id = key->second;
            if (o.done) {
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
    EngineLoad engine_load() const override {
        std::lock_guard lock(mutex_);
        return load_;
    }
    // A step is a batch of relayed pieces, or a passed health check: a server working on
    // responses with nothing to relay yet (non-streamed ones, long prefills) shows its life
    // by its health checks, so that the head does not take the rank for hung
    // (handshake.hang_timeout); a server that stops answering fails them instead.
    uint64_t steps() const override { return steps_ + passed_checks_.load(std::memory_order_relaxed); }

    int wakeup_fd() const override { return wakeup_fd_; }
    void clear_wakeup() override {
        uint64_t n;
        (void)!::read(wakeup_fd_, &n, sizeof n);
    }

private:
    // ---- the rank's loop thread ----

    void forward_queued() {
        while (active_.size() < std::max(1u, config_.max_concurrency) && !queue_.empty()) {
            wire::Request request = std::move(queue_.front());
            queue_.pop_front();
            uint64_t key = ++last_key_;
            active_[request.id] = key;
            keys_[key] = request.id;
            asio::post(
                io_, [this, key, request = std::move(request)]() mutable { start_upstream(key, std::move(request)); });
        }
    }

    // The pieces that arrived, in order, up to max_piece_bytes of data in all (at least one
    // piece), so that one OUTPUTS message stays below daemon.max_message_bytes; the rest go
    // at the next step.
    std::vector<wire::Output> take_pending() {
        std::lock_guard lock(mutex_);
        size_t count = 0;
        for (size_t bytes = 0; count < pending_.size(); ++count) {
            bytes += pending_[count].data.size();
            if (count > 0 && bytes > max_piece_bytes) break;
        }
        std::vector<wire::Output> taken(std::make_move_iterator(pending_.begin()),
                                        std::make_move_iterator(pending_.begin() + static_cast<ptrdiff_t>(count)));
        pending_.erase(pending_.begin(), pending_.begin() + static_cast<ptrdiff_t>(count));
        pending_index_.clear();
        for (size_t i = 0; i < pending_.size(); ++i) pending_index_[pending_[i].id] = i;
        return taken;
    }

    // ---- both threads ----

    void wake() {
        uint64_t one = 1;
        (void)!::write(wakeup_fd_, &one, sizeof one);
    }

    void fail(int exit_code, ReasonCode reason_code, const std::string& message) {
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

    // Queues a piece for the loop (under the upstream's key; step() maps it back to the
    // head's id). A piece joins the request's last one not yet taken while both fit one
    // piece, so a slow loop gets few larger pieces. Only the first piece of a batch wakes the
    // loop: until step() has taken the batch, has_work() is true and the loop does not sleep.
    void deliver(wire::Output piece) {
        bool first;
        {
            std::lock_guard lock(mutex_);
            first = pending_.empty();
            auto it = pending_index_.find(piece.id);
            if (it != pending_index_.end() && pending_[it->second].data.size() + piece.data.size() <= max_piece_bytes) {
                wire::Output& last = pending_[it->second];
                last.data += piece.data;
                last.tokens += piece.tokens;
                last.done = piece.done;
            } else {
                pending_index_[piece.id] = pending_.size();
                pending_.push_back(std::move(piece));
            }
        }
        if (first) wake();
    }

    void shut_down() {
        stopping_ = true;
        for (auto& [key, up] : upstreams_) close(*up);
        upstreams_.clear();
        close_idle();
        if (child_.reap()) return io_.stop();
        child_.signal_group(SIGTERM);
        // A stopped server (SIGSTOP, SIGTSTP: one that failed its health checks for that) acts
        // on SIGTERM only once it runs again; without SIGCONT it would sit out all of
        // stop_grace, and the head would hold the rank's requests as long (it moves them only
        // once the rank has exited). As systemd does, SIGCONT follows SIGTERM.
        child_.signal_group(SIGCONT);
        // The health timer's next check is cancelled with it.
        health_timer_.expires_after(stop_grace);
        health_timer_.async_wait([this](const boost::system::error_code&) { io_.stop(); });
    }

    void watch_child() {
        child_watch_.async_wait(asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
            if (ec) return;
            auto status = child_.reap();
            if (!status) return watch_child();
            // Its connections went with it; no request may start on one.
            server_gone_ = true;
            close_idle();
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

    void fetch(const std::string& path, Clock::duration timeout, std::function<void(Fetched)> done) {
        auto f = std::make_shared<Fetch>(io_);
        f->stream.expires_after(timeout);  // for connecting, sending and reading together
        f->request = {http::verb::get, path, 11};
        f->request.set(http::field::host, host_);
        f->request.set(http::field::connection, "close");
        f->parser.body_limit(fetch_body_limit);
        f->stream.async_connect(endpoint_, [f, done = std::move(done)](const boost::system::error_code& ec) mutable {
            if (ec) return done({0, {}, "cannot connect: " + ec.message()});
            http::async_write(f->stream, f->request,
                              [f, done = std::move(done)](const boost::system::error_code& ec, size_t) mutable {
                                  if (ec) return done({0, {}, "cannot send the request: " + ec.message()});
                                  http::async_read(
                                      f->stream, f->buffer, f->parser,
                                      [f, done = std::move(done)](const boost::system::error_code& ec, size_t) {
                                          if (ec) return done({0, {}, "no answer: " + ec.message()});
                                          done({f->parser.get().result_int(), std::move(f->parser.get().body()), {}});
                                      });
                              });
        });
    }

    void schedule_health_check(Clock::time_point at) {
        health_timer_.expires_at(at);
        health_timer_.async_wait([this](const boost::system::error_code& ec) {
            if (!ec && !stopping_) check_health();
        });
    }

    void check_health() {
        bool start = starting();
        auto began = Clock::now();
        if (!start) read_load();
        fetch(config_.health_path, start ? Clock::duration(start_probe_timeout) : health_interval_,
              [this, began](Fetched f) { checked_health(f, began); });
    }

    void checked_health(const Fetched& f, Clock::time_point began) {
        if (stopping_) return;
        bool healthy = f.status == 200;
        std::string url = "GET http://" + host_ + config_.health_path;
        if (starting()) {
            if (healthy) {
                {
                    std::lock_guard lock(mutex_);
                    if (state_.phase == EngineState::Phase::starting) state_.phase = EngineState::Phase::ready;
                }
                log::info("the backend server (pid {}) is healthy after {:.1f} s", child_.pid(),
                          std::chrono::duration<double>(Clock::now() - started_at_).count());
                wake();
                return schedule_health_check(Clock::now() + health_interval_);
            }
            if (Clock::now() - started_at_ > std::chrono::duration<double>(config_.ready_timeout)) {
                return fail(exit_code::config, "backend-unhealthy",
                            fmt::format("the backend server (pid {}) did not pass its health check within {} s "
                                        "(engine.ready_timeout); phase: {}; last check: {}: {}; command: {}",
                                        child_.pid(), config_.ready_timeout, waiting_phase, url, f.detail(),
                                        plan_.command_line));
            }
            return schedule_health_check(Clock::now() + start_probe_interval);
        }
        uint32_t before = std::exchange(health_failures_, healthy ? 0 : health_failures_ + 1);
        {
            std::lock_guard lock(mutex_);
            load_.health_failures = health_failures_;
        }
        if (health_failures_ != before) wake();  // the rank tells the head at once, not at its next turn
        if (healthy) {
            passed_checks_.fetch_add(1, std::memory_order_relaxed);
            if (before) log::info("the backend server's health check passes again after {} failed", before);
        } else if (health_failures_ >= config_.health_failures) {
            return fail(exit_code::failure, "backend-unhealthy",
                        fmt::format("the backend server (pid {}) failed {} health checks in a row; last: {}: {}",
                                    child_.pid(), health_failures_, url, f.detail()));
        } else {
            log::warning("the backend server's health check failed ({}: {}); {} of {} before the rank gives up", url,
                         f.detail(), health_failures_, config_.health_failures);
        }
        // Every interval from the last check's start: a check that timed out is followed at once.
        schedule_health_check(began + health_interval_);
    }

    // The server's queue and KV cache figures, with each health check: from /metrics where it
    // has them, else the KV cache from /slots. A path the server does not have is not asked
    // again (until the rank starts a new server); one that does not answer leaves the last
    // figures (the health check reports the server).
    void read_load() {
        if (load_in_flight_) return;
        load_in_flight_ = true;
        if (metrics_absent_) return read_slots({});
        fetch(metrics_path, health_interval_, [this](Fetched f) {
            EngineFigures figures;
            if (f.status == 0) return loaded(figures);
            if (f.status == 200) figures = parse_metrics(f.body);
            if (absent(f.status)) forget(metrics_absent_, metrics_path, f.status);
            if (figures.kv_cache_usage) return loaded(figures);
            read_slots(figures);
        });
    }

    void read_slots(EngineFigures figures) {
        if (slots_absent_) return loaded(figures);
        fetch(slots_path, health_interval_, [this, figures](Fetched f) mutable {
            if (f.status == 200) {
                if (auto use = parse_slots(f.body)) figures.kv_cache_usage = use->share();
            }
            if (absent(f.status)) forget(slots_absent_, slots_path, f.status);
            loaded(figures);
        });
    }

    void forget(bool& absent_path, const std::string& path, unsigned status) {
        log::info("the backend server answers GET {} with HTTP {}; the rank reads its load without it", path, status);
        absent_path = true;
    }

    void loaded(const EngineFigures& figures) {
        load_in_flight_ = false;
        std::lock_guard lock(mutex_);
        if (figures.queued) load_.queued = *figures.queued;
        if (figures.kv_cache_usage) load_.kv_cache_usage = *figures.kv_cache_usage;
    }

    // Sends the head's request as it is to the server, on an idle connection of the pool if
    // there is one, else on a new one. (No "Connection: close": HTTP/1.1 keeps it open.)
    void start_upstream(uint64_t key, wire::Request request) {
        if (!valid_request_path(request.path)) {
            return deliver(error_piece(
                key, false,
                {400, "invalid_request_error", "the request path is not one a server can be asked", "", "bad-path"}));
        }
        auto up = std::make_shared<Upstream>(io_, key, request.id);
        upstreams_[key] = up;
        up->request = {http::verb::post, request.path, 11};
        up->request.set(http::field::host, host_);
        up->request.set(http::field::content_type, "application/json");
        up->request.body() = std::move(request.body);
        up->request.prepare_payload();
        if (take_idle(up->socket)) {
            up->reused = true;
            return send_request(up);
        }
        connect(up);
    }

    void connect(const std::shared_ptr<Upstream>& up) {
        up->socket.async_connect(endpoint_, [this, up](const boost::system::error_code& ec) {
            if (ec) return connection_lost(*up, "cannot connect: " + ec.message());
            send_request(up);
        });
    }

    void send_request(const std::shared_ptr<Upstream>& up) {
        http::async_write(up->socket, up->request, [this, up](const boost::system::error_code& ec, size_t) {
            if (up->ended) return;
            if (ec && went_stale(*up, ec)) return retry(up);
            if (ec) return connection_lost(*up, "cannot send the request: " + ec.message());
            // Until the header shows an event stream, a body (whose Content-Length the parser
            // would reserve at once) may be at most one piece.
            up->parser.body_limit(max_piece_bytes);
            http::async_read_header(up->socket, up->buffer, up->parser,
                                    [this, up](const boost::system::error_code& ec, size_t) {
                                        if (up->ended) return;
                                        if (ec && went_stale(*up, ec)) return retry(up);
                                        if (ec) return read_failed(*up, ec, "no answer");
                                        const auto& header = up->parser.get();
                                        up->status = header.result_int();
                                        up->content_type = std::string(header[http::field::content_type]);
                                        up->event_stream = is_event_stream(up->content_type);
                                        if (up->event_stream)
                                            up->parser.body_limit(boost::none);  // relay() bounds each event
                                        read_body(up);
                                    });
        });
    }

    // A pooled connection that the server closed while it was idle (its keep-alive timeout,
    // or just as the request went out): the write or the first read fails with EOF or a reset
    // before any byte of the response came. Such a request goes again, once, on a new
    // connection; never after response bytes arrived.
    static bool went_stale(const Upstream& up, const boost::system::error_code& ec) {
        if (!up.reused || up.parser.got_some() || up.buffer.size() != 0) return false;
        return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
            ec == asio::error::broken_pipe || ec == asio::error::connection_aborted;
    }

    void retry(const std::shared_ptr<Upstream>& stale) {
        log::debug("request {}: the idle connection to the backend server was closed; sending it on a new one",
                   stale->id);
        close(*stale);
        auto up = std::make_shared<Upstream>(io_, stale->key, stale->id);
        up->request = std::move(stale->request);
        upstreams_[up->key] = up;
        connect(up);
    }

    void read_body(const std::shared_ptr<Upstream>& up) {
        if (up->parser.is_done()) return finish(*up);
        http::async_read_some(up->socket, up->buffer, up->parser,
                              [this, up](const boost::system::error_code& ec, size_t) {
                                  if (up->ended) return;
                                  if (!relay(*up, up->parser.get().body())) return;
                                  if (ec) return read_failed(*up, ec, "the response broke off");
                                  read_body(up);
                              });
    }

    // Takes body bytes as they arrive (ARRIVED: the parser's body so far): a stream's complete
    // events go out at once (and leave ARRIVED), any other body stays in the parser until it
    // is complete. False when the response cannot be relayed (the rank has answered).
    bool relay(Upstream& up, std::string& arrived) {
        if (!up.event_stream) {
            if (arrived.size() > max_piece_bytes) {
                upstream_failed(up, fmt::format("a response body beyond {} MiB", max_piece_bytes >> 20));
                return false;
            }
            return true;
        }
        bool fed = up.sse.feed(arrived, up.events);
        arrived.clear();
        if (!fed) {
            upstream_failed(up, fmt::format("an event beyond {} MiB", max_piece_bytes >> 20));
            return false;
        }
        if (up.events.empty()) return true;
        uint32_t tokens = 0;
        for (const auto& event : up.events) tokens += count_tokens(up, event_completion_tokens(event));
        std::string data;
        if (up.events.size() == 1) {
            data = std::move(up.events.front());
        } else {
            size_t size = 0;
            for (const auto& event : up.events) size += event.size();
            data.reserve(size);
            for (const auto& event : up.events) data += event;
        }
        up.events.clear();
        send(up, std::move(data), tokens, false);
        return true;
    }

    // The completion tokens a piece adds, from the server's usage: a stream's is on its last
    // chunk, or on every chunk and cumulative with vLLM's continuous usage stats.
    static uint32_t count_tokens(Upstream& up, std::optional<uint32_t> total) {
        if (!total || *total <= up.tokens) return 0;
        return *total - std::exchange(up.tokens, *total);
    }

    void send(Upstream& up, std::string data, uint32_t tokens, bool done) {
        wire::Output piece;
        piece.id = up.key;
        if (!up.started) {
            piece.status = up.status;
            piece.content_type = up.content_type;
            up.started = true;
        }
        piece.data = std::move(data);
        piece.tokens = tokens;
        piece.done = done;
        deliver(std::move(piece));
    }

    // The server's response is complete: the rest of it goes out as the last piece.
    void finish(Upstream& up) {
        if (up.event_stream) {
            std::string rest = up.sse.finish();
            uint32_t tokens = count_tokens(up, event_completion_tokens(rest));
            send(up, std::move(rest), tokens, true);
        } else {
            std::string& body = up.parser.get().body();
            if (up.status >= 500)
                log::warning("request {}: the backend server answered HTTP {}: {}", up.id, up.status,
                             std::string_view(body).substr(0, 300));
            uint32_t tokens = count_tokens(up, usage_completion_tokens(body));
            send(up, std::move(body), tokens, true);
        }
        if (reusable(up)) return keep_idle(up);
        end(up);
    }

    // A connection whose response was read completely may carry the next request if the
    // server keeps it open (HTTP/1.1 without "Connection: close") and the response's end was
    // marked by its Content-Length or chunked framing, not by the server closing it, and
    // nothing came after it.
    bool reusable(const Upstream& up) const {
        const auto& p = up.parser;
        return !up.ended && !stopping_ && !server_gone_ && p.is_done() && p.keep_alive() && !p.upgrade() &&
            (p.chunked() || p.content_length()) && up.buffer.size() == 0;
    }

    void keep_idle(Upstream& up) {
        up.ended = true;
        if (idle_.size() < std::max(1u, config_.max_concurrency)) {
            idle_.push_back(std::move(up.socket));
        } else {
            close(up);
        }
        upstreams_.erase(up.key);
    }

    // The most recently used idle connection the server has not closed meanwhile (a peek
    // finds its FIN, or unexpected bytes), into SOCKET. False when there is none.
    bool take_idle(tcp::socket& socket) {
        while (!idle_.empty()) {
            tcp::socket idle = std::move(idle_.back());
            idle_.pop_back();
            char byte;
            ssize_t n = ::recv(idle.native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                socket = std::move(idle);
                return true;
            }
            boost::system::error_code ignored;
            idle.close(ignored);
        }
        return false;
    }

    void close_idle() {
        for (auto& socket : idle_) {
            boost::system::error_code ignored;
            socket.close(ignored);
        }
        idle_.clear();
    }

    // A read failed: a response the parser refused is the server's fault and answered at
    // once; a connection that broke off is connection_lost().
    void read_failed(Upstream& up, const boost::system::error_code& ec, std::string_view what) {
        if (ec == http::error::body_limit)
            return upstream_failed(up, fmt::format("a response body beyond {} MiB", max_piece_bytes >> 20));
        if (malformed(ec)) return upstream_failed(up, fmt::format("{}: not HTTP ({})", what, ec.message()));
        connection_lost(up, fmt::format("{}: {}", what, ec.message()));
    }

    // The connection to the server failed. Most often the server is dying, and then the
    // rank fails and the head handles the request as on any lost rank (retrying it if nothing
    // was relayed yet); only if the server is still running a moment later does the rank
    // answer the request itself.
    void connection_lost(Upstream& up, const std::string& why) {
        if (up.ended) return;
        end(up);
        auto timer = std::make_shared<asio::steady_timer>(io_, connection_loss_grace);
        timer->async_wait(
            [this, timer, key = up.key, id = up.id, started = up.started, why](const boost::system::error_code& ec) {
                if (ec || stopping_ || state().phase == EngineState::Phase::failed) return;
                log::warning("request {}: the backend server did not complete it: {}", id, why);
                deliver(error_piece(key, started, bad_upstream(why)));
            });
    }

    // The server's response cannot be relayed: the rank answers in its place, and closing the
    // connection ends the request in the server.
    void upstream_failed(Upstream& up, const std::string& why) {
        if (up.ended) return;
        log::warning("request {}: the backend server's response could not be relayed: {}", up.id, why);
        deliver(error_piece(up.key, up.started, bad_upstream(why)));
        end(up);
    }

    void end(Upstream& up) {
        close(up);
        upstreams_.erase(up.key);
    }

    void close(Upstream& up) {
        up.ended = true;
        boost::system::error_code ignored;
        up.socket.shutdown(tcp::socket::shutdown_both, ignored);
        up.socket.close(ignored);
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
    std::string host_;  // the Host header: the address the server listens on
    Clock::duration health_interval_;
    ChildProcess child_;

    // Shared between the loop and the I/O thread.
    mutable std::mutex mutex_;
    EngineState state_;
    EngineLoad load_;
    std::deque<wire::Output> pending_;
    std::unordered_map<uint64_t, size_t> pending_index_;  // a key's last piece in pending_
    std::atomic<uint64_t> passed_checks_{0};              // health checks passed since ready
    int wakeup_fd_ = -1;

    // The loop thread's.
    std::deque<wire::Request> queue_;
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
    asio::steady_timer health_timer_;
    std::unordered_map<uint64_t, std::shared_ptr<Upstream>> upstreams_;
    std::vector<tcp::socket> idle_;  // open connections to the server, free for the next request
    bool server_gone_ = false;       // the server exited: no connection goes back to the pool
    uint32_t health_failures_ = 0;   // health checks failed in a row
    bool load_in_flight_ = false;
    bool metrics_absent_ = false;
    bool slots_absent_ = false;
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
            return Error{"local rank " + std::to_string(identity.local_rank) +
                             " has no GPU: CUDA_VISIBLE_DEVICES of "
                             "dpengined lists only " +
                             std::to_string(gpus.size()) + " (" + it->second +
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
