#include "engine/rank.hpp"

#include "core/exit_codes.hpp"
#include "core/keys.hpp"
#include "core/log.hpp"
#include "core/transport.hpp"
#include "core/wire.hpp"
#include "engine/engine.hpp"

#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstring>
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
}

uint64_t random_u64() {
    uint64_t v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v) v = static_cast<uint64_t>(Clock::now().time_since_epoch().count()) ^ getpid();
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

bool same_engine(const wire::EngineConfig& a, const wire::EngineConfig& b) { return a == b; }

// The rank's connection to the head: one DEALER, CURVE when keys are given, and a monitor
// that reports connection events so the rank can say what it is waiting for.
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
    }

    // False when the message could not be queued (no connection to the head).
    bool send(const wire::Message& message, uint64_t epoch) {
        std::string bytes = wire::encode(message, epoch);
        return socket_.send(zmq::buffer(bytes), zmq::send_flags::dontwait).has_value();
    }

    struct Event {
        uint16_t id = 0;
        uint32_t value = 0;
    };

    // Waits up to `timeout` for a message, a connection event or `wakeup_fd` (when not -1).
    void wait(std::chrono::milliseconds timeout, int wakeup_fd = -1) {
        zmq::pollitem_t items[] = {{socket_.handle(), 0, ZMQ_POLLIN, 0},
                                   {monitor_.handle(), 0, ZMQ_POLLIN, 0},
                                   {nullptr, wakeup_fd, ZMQ_POLLIN, 0}};
        try {
            zmq::poll(items, wakeup_fd >= 0 ? 3 : 2, timeout);
        } catch (const zmq::error_t& e) {
            if (e.num() != EINTR) throw;
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
        while (socket_.recv(msg, zmq::recv_flags::dontwait)) {
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
};

class Rank {
public:
    explicit Rank(const RankOptions& options) : options_(options), conn_(options) {
        hello_.rank = options.rank;
        hello_.local_rank = options.local_rank;
        hello_.node = options.node;
        hello_.dp_size = options.dp_size;
        hello_.incarnation = random_u64();
        hello_.build = DPENGINE_VERSION;
    }

    int run() {
        const auto started = Clock::now();
        auto next_heartbeat = Clock::now();
        wire::Outputs outputs;
        while (!stop_requested) {
            bool busy = serving() && loop_->has_work();
            auto wait = busy ? Clock::duration::zero() : std::chrono::milliseconds(100);
            conn_.wait(std::chrono::duration_cast<std::chrono::milliseconds>(wait), loop_ ? loop_->wakeup_fd() : -1);
            if (loop_) loop_->clear_wakeup();
            while (auto event = conn_.next_event()) on_event(*event);
            while (auto env = conn_.next_message()) {
                if (int code = on_message(*env); code >= 0) return code;
            }
            if (starting_) {
                if (int code = watch_start(next_heartbeat); code >= 0) return code;
            }
            if (serving()) {
                if (auto state = loop_->state(); state.phase == EngineState::Phase::failed) return engine_failed(state);
            }
            if (!serving()) {
                if (!hello_sent_ && connected_ && Clock::now() >= hello_not_before_) hello_sent_ = conn_.send(hello_, 0);
                if (options_.connect_timeout > 0 && !ever_configured_ &&
                    Clock::now() - started > std::chrono::duration<double>(options_.connect_timeout)) {
                    log::error("no CONFIG from the head at {} within {} s; is dpengined running there?",
                               options_.connect, options_.connect_timeout);
                    return exit_code::unreachable;
                }
                continue;
            }
            if (loop_->has_work()) {
                outputs.items.clear();
                loop_->step(outputs);
                if (!outputs.items.empty() && conn_.send(outputs, epoch_)) next_heartbeat = Clock::now() + heartbeat_every_;
            }
            if (Clock::now() >= next_heartbeat) {
                conn_.send(wire::Heartbeat{loop_->steps(), loop_->running(), loop_->waiting()}, epoch_);
                next_heartbeat = Clock::now() + heartbeat_every_;
            }
        }
        return exit_code::ok;
    }

private:
    bool serving() const { return loop_ && configured_; }

    // The engine is starting (a backend server may take minutes): heartbeats keep the head
    // from counting the rank as silent until READY. Returns an exit code, or -1 to go on.
    int watch_start(Clock::time_point& next_heartbeat) {
        EngineState state = loop_->state();
        if (state.phase == EngineState::Phase::failed) return engine_failed(state);
        if (state.phase == EngineState::Phase::starting) {
            if (Clock::now() >= next_heartbeat) {
                conn_.send(wire::Heartbeat{0, 0, 0}, epoch_);
                next_heartbeat = Clock::now() + heartbeat_every_;
            }
            return -1;
        }
        starting_ = false;
        configured_ = true;
        conn_.send(wire::Ready{loop_->capacity(), loop_->device()}, epoch_);
        log::info("ready: DP rank {} of {}, {} backend on {}", options_.rank, dp_size_, engine_.backend, loop_->device());
        return -1;
    }

    // The engine cannot go on: say why (log and head), and end the rank with its exit code.
    int engine_failed(const EngineState& state) {
        log::error("{} ({})", state.message, state.reason_code);
        conn_.send(wire::ErrorReply{state.reason_code, state.message}, epoch_);
        return state.exit_code;
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
                log::error("the head at {} refused this node's key (status {}); add the line of this node's KEY.pub "
                           "to the head's security.authorized_keys", options_.connect, e.value);
                break;
            default:
                log::warning("handshake with the head at {} failed (event {:#x}); check security.head_public_key",
                             options_.connect, e.id);
        }
    }

    // Returns an exit code to stop with, or -1 to go on.
    int on_message(wire::Envelope& env) {
        if (auto* config = std::get_if<wire::Config>(&env.message)) return on_config(*config);
        if (auto* refused = std::get_if<wire::Refused>(&env.message)) {
            if (refused->code == "not-registered" && ever_configured_) {
                // The head does not know this connection (it restarted, or declared this rank
                // lost). Whatever was in flight is gone on its side too: start over.
                log::notice("the head no longer knows this rank ({}); registering again", refused->message);
                configured_ = false;
                starting_ = false;
                hello_sent_ = false;
                return -1;
            }
            if (refused->code == "duplicate-rank" && retry_duplicate()) {
                log::notice("the head still holds rank {} for an earlier process ({}); retrying", options_.rank,
                            refused->message);
                hello_sent_ = false;
                hello_not_before_ = Clock::now() + std::chrono::seconds(1);
                return -1;
            }
            log::error("the head refused rank {}: {} ({})", options_.rank, refused->message, refused->code);
            return exit_code::refused;
        }
        if (!serving()) return -1;
        if (auto* add = std::get_if<wire::Add>(&env.message)) {
            loop_->add(*add);
        } else if (auto* abort = std::get_if<wire::Abort>(&env.message)) {
            for (uint64_t id : abort->ids) loop_->abort(id);
        } else if (std::holds_alternative<wire::Shutdown>(env.message)) {
            return exit_code::ok;
        } else if (auto* err = std::get_if<wire::ErrorReply>(&env.message)) {
            log::warning("the head reports: {} ({})", err->message, err->code);
        }
        return -1;
    }

    int on_config(const wire::Config& config) {
        if (configured_) return -1;
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
        dp_size_ = config.dp_size;
        ever_configured_ = true;
        starting_ = true;  // READY once the engine's state says so (watch_start)
        return -1;
    }

    const RankOptions& options_;
    Connection conn_;
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
    bool waiting_logged_ = false;
    Clock::time_point last_wait_log_{};
    Clock::time_point hello_not_before_{};
    Clock::time_point first_duplicate_{};
};

}  // namespace

std::optional<RankOptions> parse_rank_options(int argc, char** argv) {
    RankOptions o;
    bool have_connect = false, have_rank = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
        if (!value) {
            std::fprintf(stderr, "dpengine-rank: option '%s' needs a value; this program is started by dpengined\n", argv[i]);
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
        std::fprintf(stderr, "dpengine-rank: --connect and --rank are required; this program is started by dpengined\n");
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
