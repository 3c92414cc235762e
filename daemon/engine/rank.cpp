#include "engine/rank.hpp"

#include "core/exit_codes.hpp"
#include "core/keys.hpp"
#include "core/log.hpp"
#include "core/quiet_thread.hpp"
#include "core/transport.hpp"
#include "core/wire.hpp"
#include "engine/engine.hpp"
#include "engine/lockstep.hpp"
#include "engine/module_loader.hpp"
#include "engine/native_engine.hpp"

#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <stop_token>
#include <thread>
#include <zmq.hpp>

namespace dpengine::engine {
namespace {

using Clock = std::chrono::steady_clock;

std::atomic<bool> stop_requested{false};

void on_stop_signal(int) { stop_requested = true; }

void install_signal_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;  // no SA_RESTART: a blocked poll returns with EINTR
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, nullptr);
    sigaction(SIGINT, &sa, nullptr);
    // A DP group peer that dies mid-write must fail the collective, not kill this rank.
    signal(SIGPIPE, SIG_IGN);
}

uint64_t random_u64() {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v)
        v = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^ getpid();
    return v;
}

template <class T>
bool parse_number(const char* s, T& out) {
    auto [end, ec] = std::from_chars(s, s + std::strlen(s), out);
    return ec == std::errc() && *end == '\0';
}

// Why a TCP endpoint cannot be reached, in words ("Connection refused"), for the log line that
// tells an operator what a headless node is waiting for. ZeroMQ retries silently.
std::string probe_reason(const std::string& endpoint) {
    constexpr std::string_view prefix = "tcp://";
    if (endpoint.rfind(prefix, 0) != 0) return "not listening";
    std::string rest = endpoint.substr(prefix.size());
    size_t colon = rest.rfind(':');
    if (colon == std::string::npos) return "bad endpoint";
    std::string host = rest.substr(0, colon), port = rest.substr(colon + 1);
    if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_STREAM;
    if (int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res); rc != 0) return gai_strerror(rc);
    std::string reason = "unreachable";
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        if (connect(fd, res->ai_addr, res->ai_addrlen) == 0) {
            reason = "connected, but the CURVE handshake did not complete";
        } else if (errno == EINPROGRESS) {
            pollfd p{fd, POLLOUT, 0};
            if (poll(&p, 1, 1000) == 0) {
                reason = "no answer (timed out)";
            } else {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
                reason = err ? std::strerror(err) : "connected, but the handshake did not complete";
            }
        } else {
            reason = std::strerror(errno);
        }
        close(fd);
    }
    freeaddrinfo(res);
    return reason;
}

// The address this node's DP group connections use: the local address that routes to the head
// (so a peer on another node reaches it the way the head does), loopback for ipc://.
std::string group_bind_address(const std::string& endpoint) {
    constexpr std::string_view prefix = "tcp://";
    if (endpoint.rfind(prefix, 0) != 0) return "127.0.0.1";
    std::string rest = endpoint.substr(prefix.size());
    size_t colon = rest.rfind(':');
    if (colon == std::string::npos) return "127.0.0.1";
    std::string host = rest.substr(0, colon), port = rest.substr(colon + 1);
    if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
    addrinfo hints{}, *res = nullptr;
    hints.ai_socktype = SOCK_DGRAM;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &res) != 0) return "127.0.0.1";
    std::string address = "127.0.0.1";
    int fd = socket(res->ai_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_storage local{};
    socklen_t len = sizeof local;
    if (fd >= 0 && connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
        getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0) {
        char text[INET6_ADDRSTRLEN] = {};
        const void* raw = local.ss_family == AF_INET6
            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(&local)->sin6_addr)
            : static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(&local)->sin_addr);
        if (inet_ntop(local.ss_family, raw, text, sizeof text)) address = text;
    }
    if (fd >= 0) close(fd);
    freeaddrinfo(res);
    return address;
}

bool same_engine(const wire::EngineConfig& a, const wire::EngineConfig& b) { return a == b; }

// The rank's connection to the head: one DEALER, CURVE when keys are given, and a monitor
// that reports connection events so the rank can say what it is waiting for.
//
// The DEALER is shared by the step loop and the heartbeat thread. Every use of it holds
// mutex_ (a mutex is the full memory barrier ZeroMQ asks for when a socket is used from more
// than one thread). The loop waits on the socket's descriptor without the lock, so neither a
// wait nor a long step ever delays a heartbeat; after each heartbeat the thread wakes the loop
// (wake_fd_), because its send may have consumed the edge-triggered readiness the loop waits for.
class Connection {
public:
    explicit Connection(const RankOptions& options)
        : context_(1), socket_(context_, zmq::socket_type::dealer), monitor_(context_, zmq::socket_type::pair) {
        transport::configure(socket_, options.max_message_bytes);
        // Queue nothing for a head that is not there: what the rank would send is stale by the
        // time a head (maybe a new one) answers.
        socket_.set(zmq::sockopt::immediate, 1);
        socket_.set(zmq::sockopt::reconnect_ivl, 500);
        socket_.set(zmq::sockopt::reconnect_ivl_max, 2000);
        if (!options.server_key.empty()) {
            auto pair = keys::load_secret(options.key_file);
            if (!pair) throw std::runtime_error(pair.error().message);
            socket_.set(zmq::sockopt::curve_serverkey, options.server_key);
            socket_.set(zmq::sockopt::curve_publickey, pair->public_z85);
            socket_.set(zmq::sockopt::curve_secretkey, pair->secret_z85);
        }
        if (zmq_socket_monitor(socket_.handle(), "inproc://connection-monitor",
                               ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_DISCONNECTED |
                                   ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                                   ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) != 0) {
            throw zmq::error_t();
        }
        monitor_.connect("inproc://connection-monitor");
        socket_.connect(options.connect);
        socket_fd_ = socket_.get(zmq::sockopt::fd);
        monitor_fd_ = monitor_.get(zmq::sockopt::fd);
        wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (wake_fd_ < 0) throw std::runtime_error(std::string("eventfd: ") + std::strerror(errno));
    }

    ~Connection() {
        if (wake_fd_ >= 0) ::close(wake_fd_);
    }
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    // False when the message could not be queued (no connection to the head). Any thread.
    bool send(const wire::Message& message, uint64_t epoch) {
        std::string bytes = wire::encode(message, epoch);
        std::lock_guard lock(mutex_);
        return socket_.send(zmq::buffer(bytes), zmq::send_flags::dontwait).has_value();
    }

    // Makes the loop's wait() return and look at the socket again. Any thread.
    void wake() {
        uint64_t one = 1;
        (void)!::write(wake_fd_, &one, sizeof one);
    }

    struct Event {
        uint16_t id = 0;
        uint32_t value = 0;
    };

    // Waits up to `timeout` for a message, a connection event, a wake() or `engine_fd` (the
    // engine's wake-up descriptor, when not -1). The sockets' descriptors are edge-triggered:
    // what is already queued is checked first.
    void wait(std::chrono::milliseconds timeout, int engine_fd = -1) {
        {
            std::lock_guard lock(mutex_);
            if (socket_.get(zmq::sockopt::events) & ZMQ_POLLIN) return;
        }
        if (monitor_.get(zmq::sockopt::events) & ZMQ_POLLIN) return;
        pollfd fds[] = {
            {socket_fd_, POLLIN, 0}, {monitor_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}, {engine_fd, POLLIN, 0}};
        if (::poll(fds, engine_fd >= 0 ? 4 : 3, static_cast<int>(timeout.count())) > 0 && (fds[2].revents & POLLIN)) {
            uint64_t count = 0;
            (void)!::read(wake_fd_, &count, sizeof count);
        }
    }

    std::optional<Event> next_event() {
        zmq::message_t head, address;
        if (!monitor_.recv(head, zmq::recv_flags::dontwait)) return std::nullopt;
        if (head.more()) (void)monitor_.recv(address, zmq::recv_flags::none);
        Event e;
        if (head.size() >= 6) {
            std::memcpy(&e.id, head.data(), 2);
            std::memcpy(&e.value, static_cast<const char*>(head.data()) + 2, 4);
        }
        return e;
    }

    std::optional<wire::Envelope> next_message() {
        zmq::message_t msg;
        while (true) {
            {
                std::lock_guard lock(mutex_);
                if (!socket_.recv(msg, zmq::recv_flags::dontwait)) break;
            }
            auto env = wire::decode(msg.to_string_view());
            if (env) return std::move(env).value();
            log::warning("ignoring a message from the head: {} ({})", env.error().message, env.error().code);
        }
        return std::nullopt;
    }

private:
    zmq::context_t context_;
    zmq::socket_t socket_;
    zmq::socket_t monitor_;
    std::mutex mutex_;  // guards socket_
    int socket_fd_ = -1;
    int monitor_fd_ = -1;
    int wake_fd_ = -1;
};

// Sends HEARTBEAT every interval from a thread of its own, with the step loop's progress
// counter: the head tells a rank that is busy on a long step (heartbeats arrive, the counter
// moves between steps) from one whose loop is stuck (heartbeats arrive, the counter stays, the
// rank has work: handshake.hang_timeout) and from one that is gone or stopped (no heartbeats:
// handshake.heartbeat_timeout). The loop only publishes figures; it never sends a heartbeat.
class HeartbeatThread {
public:
    explicit HeartbeatThread(Connection& conn)
        : conn_(conn), thread_(start_quiet_thread<std::jthread>([this](std::stop_token stop) { run(stop); })) {}
    ~HeartbeatThread() {
        thread_.request_stop();
        cv_.notify_all();
    }

    // Heartbeats go out while the rank is registered (between CONFIG and a new HELLO).
    void start(uint64_t epoch, std::chrono::milliseconds interval) {
        {
            std::lock_guard lock(mutex_);
            epoch_ = epoch;
            interval_ = interval;
            beating_ = true;
        }
        cv_.notify_all();
    }
    void pause() {
        std::lock_guard lock(mutex_);
        beating_ = false;
    }
    // The loop's figures, before it sends OUTPUTS with the same load (after a step or an
    // abort). A heartbeat reads and sends them under figures_mutex_, so one that read the
    // figures before a change is on the wire before the OUTPUTS that carries the change: the
    // head never keeps an older load than the newest the rank reported.
    void publish(uint64_t progress, uint32_t running, uint32_t waiting) {
        std::lock_guard lock(figures_mutex_);
        progress_.store(progress, std::memory_order_relaxed);
        running_.store(running, std::memory_order_relaxed);
        waiting_.store(waiting, std::memory_order_relaxed);
    }
    // Status figures for the head, likewise after each step.
    void publish_activity(uint64_t dummy_steps, uint64_t wave, uint64_t memory_used) {
        dummy_steps_.store(dummy_steps, std::memory_order_relaxed);
        wave_.store(wave, std::memory_order_relaxed);
        memory_used_.store(memory_used, std::memory_order_relaxed);
    }
    // The engine's own figures, on every turn of the loop (an idle engine's health changes
    // too). The head routes nothing new to a rank whose engine fails its health probes, so a
    // change between healthy and failing goes out at once, not at the next interval.
    void publish_engine(const Engine::EngineLoad& load) {
        engine_queued_.store(load.queued, std::memory_order_relaxed);
        kv_cache_usage_.store(load.kv_cache_usage, std::memory_order_relaxed);
        uint32_t before = health_failures_.exchange(load.health_failures, std::memory_order_relaxed);
        if ((before == 0) != (load.health_failures == 0)) beat_now();
    }

private:
    void run(std::stop_token stop) {
        std::unique_lock lock(mutex_);
        while (!stop.stop_requested()) {
            if (!beating_) {
                cv_.wait(lock, stop, [this] { return beating_; });
                continue;
            }
            uint64_t epoch = epoch_;
            prompt_ = false;
            lock.unlock();
            {
                std::lock_guard figures(figures_mutex_);
                wire::Heartbeat beat{progress_.load(std::memory_order_relaxed),
                                     running_.load(std::memory_order_relaxed),
                                     waiting_.load(std::memory_order_relaxed)};
                beat.dummy_steps = dummy_steps_.load(std::memory_order_relaxed);
                beat.wave = wave_.load(std::memory_order_relaxed);
                beat.memory_used = memory_used_.load(std::memory_order_relaxed);
                beat.engine_queued = engine_queued_.load(std::memory_order_relaxed);
                beat.kv_cache_usage = kv_cache_usage_.load(std::memory_order_relaxed);
                beat.health_failures = health_failures_.load(std::memory_order_relaxed);
                conn_.send(beat, epoch);
            }
            conn_.wake();
            lock.lock();
            cv_.wait_for(lock, stop, interval_, [this] { return prompt_; });
        }
    }

    // The next heartbeat goes out now.
    void beat_now() {
        {
            std::lock_guard lock(mutex_);
            prompt_ = true;
        }
        cv_.notify_all();
    }

    Connection& conn_;
    std::mutex mutex_;
    std::mutex figures_mutex_;  // a heartbeat's reading and sending of the load vs publish()
    std::condition_variable_any cv_;
    bool beating_ = false;
    bool prompt_ = false;  // beat_now() was called since the last heartbeat
    uint64_t epoch_ = 0;
    std::chrono::milliseconds interval_{1000};
    std::atomic<uint64_t> progress_{0};
    std::atomic<uint32_t> running_{0}, waiting_{0};
    std::atomic<uint64_t> dummy_steps_{0}, wave_{0}, memory_used_{0};
    std::atomic<uint32_t> engine_queued_{0}, health_failures_{0};
    std::atomic<double> kv_cache_usage_{0};
    std::jthread thread_;  // last: it starts in the constructor and uses the members above
};

class Rank : private Lockstep::Link, private RendezvousChannel {
public:
    explicit Rank(const RankOptions& options) : options_(options), conn_(options) {
        hello_.rank = options.rank;
        hello_.local_rank = options.local_rank;
        hello_.node = options.node;
        hello_.dp_size = options.dp_size;
        hello_.incarnation = random_u64();
        hello_.pid = static_cast<uint32_t>(getpid());
        hello_.build = DPENGINE_VERSION;
    }

    int run() {
        const auto started = Clock::now();
        wire::Outputs outputs;
        TokenOutputs tokens;
        while (!stop_requested) {
            bool busy = serving() &&
                (lockstep_ ? lockstep_->wants_to_run(lockstep_engine_->loop()) || lockstep_engine_->has_ready_output()
                           : loop_->has_work());
            auto wait = busy ? Clock::duration::zero() : std::chrono::milliseconds(100);
            conn_.wait(std::chrono::duration_cast<std::chrono::milliseconds>(wait), loop_ ? loop_->wakeup_fd() : -1);
            if (loop_) loop_->clear_wakeup();
            while (auto event = conn_.next_event()) on_event(*event);
            while (auto env = next_message()) {
                heard_from_head();
                if (int code = on_message(*env); code >= 0) return code;
            }
            if (head_grace_expired()) return exit_code::unreachable;
            if (starting_) {
                if (int code = watch_start(); code >= 0) return code;
            }
            if (serving()) {
                if (auto state = loop_->state(); state.phase == EngineState::Phase::failed) return engine_failed(state);
            }
            if (!serving()) {
                if (connected_ && hello_due()) send_hello();
                if (options_.connect_timeout > 0 && !ever_configured_ &&
                    Clock::now() - started > std::chrono::duration<double>(options_.connect_timeout)) {
                    if (!last_refusal_.empty()) {
                        log::error("no CONFIG from the head at {} within {} s; it last said: {}", options_.connect,
                                   options_.connect_timeout, last_refusal_);
                    } else {
                        log::error("no CONFIG from the head at {} within {} s; is dpengined running there?",
                                   options_.connect, options_.connect_timeout);
                    }
                    return exit_code::unreachable;
                }
                continue;
            }
            if (lockstep_) {
                outputs.items.clear();
                tokens.items.clear();
                lockstep_->advance(lockstep_engine_->loop(), tokens, *this);
                lockstep_engine_->deliver(tokens, outputs);
                publish_progress();
                if (!outputs.items.empty()) conn_.send(outputs, epoch_);
                if (Clock::now() >= next_group_report_) {
                    conn_.send(lockstep_->report(), epoch_);
                    next_group_report_ = Clock::now() + heartbeat_every_;
                }
            } else if (loop_->has_work()) {
                outputs.items.clear();
                loop_->step(outputs);
                publish_progress();
                if (!outputs.items.empty()) conn_.send(outputs, epoch_);
            } else {
                publish_progress();  // an idle engine's figures change too (health)
            }
        }
        return exit_code::ok;
    }

private:
    bool serving() const { return loop_ && configured_; }

    // The figures the next HEARTBEAT carries.
    void publish_progress() {
        heartbeat_.publish(loop_->steps(), loop_->running(), loop_->waiting());
        heartbeat_.publish_activity(lockstep_engine_ ? lockstep_engine_->loop().dummy_steps() : 0,
                                    lockstep_ ? lockstep_->wave() : 0, loop_->memory_used());
        heartbeat_.publish_engine(loop_->engine_load());
    }

    // The head answers every HEARTBEAT, so a registered rank hears from it at least once per
    // heartbeat interval; silence means the head is gone or cut off.
    void heard_from_head() {
        auto now = Clock::now();
        if (head_silent_logged_) {
            log::notice("the head at {} answers again after {:.1f} s [head-back]", options_.connect,
                        std::chrono::duration<double>(now - last_from_head_).count());
            head_silent_logged_ = false;
        }
        last_from_head_ = now;
    }

    // A rank that was registered keeps its engine (and its memory) while the head is away for
    // up to supervision.head_grace_period, so a short outage costs no reload; past it, it
    // exits and its node starts it again once the head answers.
    bool head_grace_expired() {
        if (!ever_configured_ || options_.head_grace_period <= 0) return false;
        double silent = std::chrono::duration<double>(Clock::now() - last_from_head_).count();
        double lost_after = 3 * std::chrono::duration<double>(heartbeat_every_).count();
        if (!head_silent_logged_ && silent > lost_after) {
            log::warning(
                "nothing from the head at {} for {:.1f} s; keeping the engine for up to {} s "
                "(supervision.head_grace_period) [head-lost]",
                options_.connect, silent, options_.head_grace_period);
            head_silent_logged_ = true;
        }
        if (silent <= options_.head_grace_period) return false;
        log::error(
            "nothing from the head at {} for {:.1f} s, longer than supervision.head_grace_period ({} s); "
            "stopping to free the engine; the node starts this rank again when the head answers "
            "[head-grace-expired]",
            options_.connect, silent, options_.head_grace_period);
        return true;
    }

    // Messages set aside while the DP group's rendezvous waited for its answers come first.
    std::optional<wire::Envelope> next_message() {
        if (!deferred_.empty()) {
            wire::Envelope env = std::move(deferred_.front());
            deferred_.pop_front();
            return env;
        }
        return conn_.next_message();
    }

    // Lockstep::Link
    void send(const wire::Message& message) override { conn_.send(message, epoch_); }
    RendezvousChannel& rendezvous(uint64_t group_epoch) override {
        rendezvous_epoch_ = group_epoch;
        return *this;
    }

    // RendezvousChannel: the head's key-value store for this group epoch.
    Status set(const std::string& key, const std::string& value) override {
        if (!conn_.send(wire::GroupKv{rendezvous_epoch_, key, value}, epoch_)) {
            return Error{"no connection to the head for the DP group's rendezvous", "group-failed"};
        }
        return Ok{};
    }

    Result<std::string> get(const std::string& key, Clock::time_point deadline) override {
        // The head answers once the key is set; asking again now and then covers a lost answer
        // (a reconnection).
        constexpr auto retry_every = std::chrono::milliseconds(500);
        // Heartbeats go on meanwhile from the heartbeat thread.
        auto next_ask = Clock::now();
        while (!stop_requested) {
            auto now = Clock::now();
            if (now >= deadline) {
                return Error{"the DP group's rendezvous (epoch " + std::to_string(rendezvous_epoch_) +
                                 ") did not complete within data_parallel.group_timeout: rank key '" + key +
                                 "' was not published",
                             "group-timeout"};
            }
            if (now >= next_ask) {
                conn_.send(wire::GroupKv{rendezvous_epoch_, key, std::nullopt}, epoch_);
                next_ask = now + retry_every;
            }
            auto until = std::min(deadline, next_ask);
            conn_.wait(std::max(std::chrono::milliseconds(0),
                                std::chrono::duration_cast<std::chrono::milliseconds>(until - Clock::now())) +
                       std::chrono::milliseconds(1));
            while (auto env = conn_.next_message()) {
                heard_from_head();
                if (auto* value = std::get_if<wire::GroupValue>(&env->message)) {
                    if (value->group_epoch == rendezvous_epoch_ && value->key == key && value->found)
                        return value->value;
                    continue;
                }
                bool newer_group = std::holds_alternative<wire::GroupForm>(env->message) ||
                    std::holds_alternative<wire::Shutdown>(env->message) ||
                    std::holds_alternative<wire::Refused>(env->message);
                deferred_.push_back(std::move(*env));
                if (newer_group) return Error{"the head started a newer DP group formation", "superseded"};
            }
        }
        return Error{"stopping", "superseded"};
    }

    // The engine is starting (a backend server may take minutes; the heartbeat thread keeps
    // the head from counting the rank as silent): READY once it is ready. Returns an exit
    // code, or -1 to go on.
    int watch_start() {
        EngineState state = loop_->state();
        if (state.phase == EngineState::Phase::failed) return engine_failed(state);
        if (state.phase == EngineState::Phase::starting) return -1;
        starting_ = false;
        configured_ = true;
        conn_.send(wire::Ready{loop_->capacity(), loop_->device()}, epoch_);
        publish_progress();
        log::info("ready: DP rank {} of {}, {} backend on {}", options_.rank, dp_size_, engine_.backend,
                  loop_->device());
        return -1;
    }

    // The engine cannot go on: say why (log and head), and end the rank with its exit code.
    int engine_failed(const EngineState& state) {
        log::error("{} ({})", state.message, state.reason_code);
        conn_.send(wire::ErrorReply{state.reason_code, state.message}, epoch_);
        return state.exit_code;
    }

    // HELLO goes out on every new connection, after a refusal worth retrying, and again while
    // the head leaves it unanswered: the head may be ignoring this address for a while
    // (handshake.refusal_mute), and a rank that only waited would wait forever. The wait for
    // an answer doubles up to a cap, with a random part so that a node's ranks spread out.
    bool hello_due() const {
        auto now = Clock::now();
        if (!hello_sent_) return now >= hello_not_before_;
        return !starting_ && now - hello_sent_at_ >= hello_answer_wait_;  // starting_: CONFIG came
    }

    void send_hello() {
        bool again = hello_sent_;
        if (!conn_.send(hello_, 0)) return;
        hello_sent_ = true;
        hello_sent_at_ = Clock::now();
        if (!again) return;
        if (!hello_unanswered_logged_) {
            log::notice("no answer from the head at {} to HELLO for {:.0f} s; sending it again with back-off",
                        options_.connect, std::chrono::duration<double>(hello_answer_wait_).count());
            hello_unanswered_logged_ = true;
        }
        hello_answer_wait_ = std::min(hello_answer_wait_ * 2, hello_answer_wait_max) + jitter(hello_answer_wait_ / 4);
    }

    // An answer came (CONFIG or REFUSED): the next HELLO waits the shortest time again.
    void hello_answered() {
        hello_answer_wait_ = hello_answer_wait_first;
        hello_unanswered_logged_ = false;
    }

    static Clock::duration jitter(Clock::duration up_to) {
        auto span = static_cast<uint64_t>(std::max<Clock::duration::rep>(1, up_to.count()));
        return Clock::duration(static_cast<Clock::duration::rep>(random_u64() % span));
    }

    // A restarted rank may find the head still holding its predecessor until that one's
    // heartbeats time out; it retries for a while, then gives up (another process has it).
    bool retry_duplicate() {
        auto now = Clock::now();
        if (first_duplicate_ == Clock::time_point{}) first_duplicate_ = now;
        return now - first_duplicate_ < std::chrono::seconds(15);
    }

    void on_event(const Connection::Event& e) {
        switch (e.id) {
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED:
                connected_ = true;
                if (waiting_logged_) log::info("connected to the head at {}", options_.connect);
                waiting_logged_ = false;
                // A new connection is a new peer on the head's side: register again.
                if (!serving()) hello_sent_ = false;
                break;
            case ZMQ_EVENT_DISCONNECTED:
                connected_ = false;
                if (serving()) log::warning("lost the connection to the head at {}; reconnecting", options_.connect);
                break;
            case ZMQ_EVENT_CONNECT_RETRIED: {
                auto now = Clock::now();
                if (!waiting_logged_ || now - last_wait_log_ > std::chrono::seconds(30)) {
                    log::notice("waiting for head {}: {}, retrying in {:.1f}s", options_.connect,
                                probe_reason(options_.connect), e.value / 1000.0);
                    waiting_logged_ = true;
                    last_wait_log_ = now;
                }
                break;
            }
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
                log::error(
                    "the head at {} refused this node's key (status {}); add the line of this node's KEY.pub "
                    "to the head's security.authorized_keys",
                    options_.connect, e.value);
                break;
            default:
                // The handshake timed out or was cut. Only with CURVE can a key be wrong; without
                // it, the head is not answering (stopped, frozen, overloaded).
                log::warning("handshake with the head at {} failed (event {:#x}); {}", options_.connect, e.id,
                             options_.server_key.empty()
                                 ? "the head did not answer in time (is it stopped or overloaded?); retrying"
                                 : "check security.head_public_key, or whether the head is stopped or overloaded; "
                                   "retrying");
        }
    }

    // Returns an exit code to stop with, or -1 to go on.
    int on_message(wire::Envelope& env) {
        if (auto* config = std::get_if<wire::Config>(&env.message)) return on_config(*config);
        if (auto* refused = std::get_if<wire::Refused>(&env.message)) {
            hello_answered();
            if (refused->code == ReasonCode("not-registered").str() && ever_configured_) {
                // The head does not know this connection (it restarted, or declared this rank
                // lost). Whatever was in flight is gone on its side too: start over. The head
                // answers every message sent before the new HELLO the same way: one HELLO.
                if (rejoining_) return -1;
                rejoining_ = true;
                log::notice("the head no longer knows this rank ({}); registering again", refused->message);
                configured_ = false;
                heartbeat_.pause();
                starting_ = false;
                hello_sent_ = false;
                return -1;
            }
            if (refused->code == ReasonCode("duplicate-rank").str() && retry_duplicate()) {
                log::notice("the head still holds rank {} for an earlier process ({}); retrying", options_.rank,
                            refused->message);
                hello_sent_ = false;
                hello_not_before_ = Clock::now() + std::chrono::seconds(1);
                return -1;
            }
            if (refused->code == ReasonCode("node-not-registered").str()) {
                // This node's daemon registers with the head at about the same time as its
                // ranks say HELLO; until it has, the head knows no ranks of it. Retried with
                // back-off until handshake.connect_timeout (first time) or for good (rejoining).
                if (last_refusal_.empty())
                    log::notice("the head holds no ranks for this node yet ({}); retrying", refused->message);
                last_refusal_ = refused->message + " (" + refused->code + ")";
                hello_sent_ = false;
                hello_not_before_ = Clock::now() + not_registered_wait_ + jitter(not_registered_wait_ / 4);
                not_registered_wait_ = std::min(not_registered_wait_ * 2, hello_answer_wait_max);
                return -1;
            }
            log::error("the head refused rank {}: {} ({})", options_.rank, refused->message, refused->code);
            return exit_code::refused;
        }
        if (!serving()) return -1;
        if (auto* request = std::get_if<wire::Request>(&env.message)) {
            loop_->add(*request);
        } else if (auto* abort = std::get_if<wire::Abort>(&env.message)) {
            for (uint64_t id : abort->ids) loop_->abort(id);
            // The head routes by this rank's load: let it see the drop now, not at the next
            // step's OUTPUTS or the next heartbeat.
            publish_progress();
            conn_.send(wire::Outputs{{}, loop_->running(), loop_->waiting()}, epoch_);
        } else if (auto* form = std::get_if<wire::GroupForm>(&env.message)) {
            if (lockstep_) lockstep_->on_group_form(*form);
        } else if (auto* wave = std::get_if<wire::StartWave>(&env.message)) {
            if (lockstep_) lockstep_->on_start_wave(wave->wave);
        } else if (std::holds_alternative<wire::GroupValue>(env.message)) {
            // an answer that came after its rendezvous ended: nothing waits for it
        } else if (std::holds_alternative<wire::Shutdown>(env.message)) {
            return exit_code::ok;
        } else if (auto* err = std::get_if<wire::ErrorReply>(&env.message)) {
            log::warning("the head reports: {} ({})", err->message, err->code);
        }
        return -1;
    }

    int on_config(const wire::Config& config) {
        if (configured_) return -1;
        hello_answered();
        last_refusal_.clear();
        not_registered_wait_ = hello_answer_wait_first / 8;
        rejoining_ = false;
        epoch_ = config.epoch;
        heartbeat_every_ = std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(config.heartbeat_interval > 0 ? config.heartbeat_interval : 1.0));
        // A re-registration with the same engine settings keeps the engine (and, on a GPU, its
        // loaded weights); anything else starts it afresh.
        if (!loop_ || !same_engine(engine_, config.engine)) {
            loop_.reset();  // the previous engine (and any server it runs) goes first
            auto engine = make_engine(config.engine, RankIdentity{options_.rank, options_.local_rank});
            if (!engine) {
                log::error("{}", engine.error().message);
                conn_.send(wire::ErrorReply{"init-failed", engine.error().message}, epoch_);
                return exit_code::config;
            }
            loop_ = std::move(engine).value();
            engine_ = config.engine;
        } else {
            loop_->abort_all();
        }
        if (auto made = make_lockstep(config); !made) {
            log::error("{}", made.error().message);
            conn_.send(wire::ErrorReply{"init-failed", made.error().message}, epoch_);
            return exit_code::config;
        }
        dp_size_ = config.dp_size;
        ever_configured_ = true;
        starting_ = true;  // READY once the engine's state says so (watch_start)
        publish_progress();
        heartbeat_.start(epoch_, std::chrono::duration_cast<std::chrono::milliseconds>(heartbeat_every_));
        return -1;
    }

    // Lockstep mode from CONFIG; the group itself forms when the head sends GROUP_FORM.
    Status make_lockstep(const wire::Config& config) {
        lockstep_.reset();
        lockstep_engine_ = nullptr;
        if (config.sync != "lockstep") return Ok{};
        lockstep_engine_ = dynamic_cast<NativeEngine*>(loop_.get());
        if (!lockstep_engine_) {
            return Error{"lockstep mode needs an engine that steps inside the rank; the '" + config.engine.backend +
                             "' backend runs independent engines (use data_parallel.dp_sync = \"independent\")",
                         "init-failed"};
        }
        if (config.group_kind != "gloo" && config.group_kind != "nccl") {
            return Error{"the head asks for a '" + config.group_kind +
                             "' DP group, which this rank does not support (known: gloo, nccl)",
                         "init-failed"};
        }
        // gloo comes from its module: a rank that cannot load it fails its start (exit 78)
        // instead of every formation of the group.
        if (config.group_kind == "gloo") {
            if (auto module = load_gloo_module(); !module) return Error{module.error().message, "init-failed"};
        }
        Lockstep::Settings settings;
        settings.rank = options_.rank;
        settings.sync_interval = config.sync_interval;
        if (config.group_timeout > 0) {
            settings.timeout = std::chrono::milliseconds(static_cast<int64_t>(config.group_timeout * 1000));
        }
        settings.bind_address = group_bind_address(options_.connect);
        lockstep_ = std::make_unique<Lockstep>(settings, make_group_of_kind);
        log::info("lockstep mode: {} DP group on {}, all-reduce every {} step(s)", config.group_kind,
                  settings.bind_address, settings.sync_interval);
        return Ok{};
    }

    const RankOptions& options_;
    Connection conn_;
    HeartbeatThread heartbeat_{conn_};  // after conn_: it stops before the connection closes
    std::unique_ptr<Lockstep> lockstep_;
    NativeEngine* lockstep_engine_ = nullptr;  // loop_ as lockstep mode drives it
    std::deque<wire::Envelope> deferred_;
    uint64_t rendezvous_epoch_ = 0;
    Clock::time_point next_group_report_{};
    wire::Hello hello_;
    wire::EngineConfig engine_;
    std::unique_ptr<Engine> loop_;
    uint64_t epoch_ = 0;
    uint32_t dp_size_ = 0;
    bool starting_ = false;  // configured by the head, engine not yet ready
    Clock::duration heartbeat_every_ = std::chrono::seconds(1);
    bool connected_ = false;
    bool hello_sent_ = false;
    bool configured_ = false;
    bool ever_configured_ = false;
    bool rejoining_ = false;  // sent HELLO again after a not-registered refusal, no CONFIG yet
    bool waiting_logged_ = false;
    bool head_silent_logged_ = false;
    Clock::time_point last_from_head_ = Clock::now();
    Clock::time_point last_wait_log_{};
    Clock::time_point hello_not_before_{};
    Clock::time_point first_duplicate_{};
    static constexpr Clock::duration hello_answer_wait_first = std::chrono::seconds(2);
    static constexpr Clock::duration hello_answer_wait_max = std::chrono::seconds(8);
    Clock::time_point hello_sent_at_{};
    Clock::duration hello_answer_wait_ = hello_answer_wait_first;
    bool hello_unanswered_logged_ = false;
    Clock::duration not_registered_wait_ = hello_answer_wait_first / 8;  // after node-not-registered
    std::string last_refusal_;  // the last refusal worth retrying, for the connect_timeout error
};

}  // namespace

std::optional<RankOptions> parse_rank_options(int argc, char** argv) {
    RankOptions o;
    bool have_connect = false, have_rank = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
        if (!value) {
            std::fprintf(stderr, "dpengine-rank: option '%s' needs a value; this program is started by dpengined\n",
                         argv[i]);
            return std::nullopt;
        }
        bool ok = true;
        if (arg == "--connect") {
            o.connect = value, have_connect = true;
        } else if (arg == "--rank") {
            ok = parse_number(value, o.rank), have_rank = true;
        } else if (arg == "--local-rank") {
            ok = parse_number(value, o.local_rank);
        } else if (arg == "--node") {
            o.node = value;
        } else if (arg == "--dp-size") {
            ok = parse_number(value, o.dp_size);
        } else if (arg == "--connect-timeout") {
            ok = parse_number(value, o.connect_timeout) && o.connect_timeout >= 0;
        } else if (arg == "--head-grace-period") {
            ok = parse_number(value, o.head_grace_period) && o.head_grace_period >= 0;
        } else if (arg == "--max-message-bytes") {
            ok = parse_number(value, o.max_message_bytes);
        } else if (arg == "--key") {
            o.key_file = value;
        } else if (arg == "--server-key") {
            o.server_key = value;
            ok = keys::is_z85_key(o.server_key);
        } else {
            std::fprintf(stderr, "dpengine-rank: unknown option '%s'; this program is started by dpengined\n", argv[i]);
            return std::nullopt;
        }
        if (!ok) {
            std::fprintf(stderr, "dpengine-rank: option '%s': invalid value '%s'\n", argv[i], value);
            return std::nullopt;
        }
        ++i;
    }
    if (!have_connect || !have_rank) {
        std::fprintf(stderr,
                     "dpengine-rank: --connect and --rank are required; this program is started by dpengined\n");
        return std::nullopt;
    }
    if (o.server_key.empty() != o.key_file.empty()) {
        std::fprintf(stderr, "dpengine-rank: --key and --server-key go together\n");
        return std::nullopt;
    }
    return o;
}

int run_rank(const RankOptions& options) {
    log::set_identity("rank " + std::to_string(options.rank));
    install_signal_handlers();
    try {
        Rank rank(options);
        return rank.run();
    } catch (const zmq::error_t& e) {
        log::error("ZeroMQ failure talking to {}: {}", options.connect, e.what());
        return exit_code::failure;
    } catch (const std::runtime_error& e) {
        log::error("{}", e.what());
        return exit_code::config;
    }
}

}  // namespace dpengine::engine
