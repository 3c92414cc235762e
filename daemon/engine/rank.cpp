#include "engine/rank.hpp"

#include "core/exit_codes.hpp"
#include "core/log.hpp"
#include "core/transport.hpp"
#include "core/wire.hpp"
#include "engine/step_loop.hpp"

#include <signal.h>
#include <sys/random.h>
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

class Connection {
public:
    Connection(const RankOptions& options)
        : context_(1), socket_(context_, zmq::socket_type::dealer), options_(options) {
        transport::configure(socket_, options.max_message_bytes);
        socket_.connect(options.connect);
    }

    void send(const wire::Message& message, uint64_t epoch) {
        std::string bytes = wire::encode(message, epoch);
        socket_.send(zmq::buffer(bytes), zmq::send_flags::none);
    }

    // Waits up to `timeout` for one message; nothing on timeout or signal.
    std::optional<wire::Envelope> receive(std::chrono::milliseconds timeout) {
        zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
        try {
            if (zmq::poll(&item, 1, timeout) == 0) return std::nullopt;
        } catch (const zmq::error_t& e) {
            if (e.num() == EINTR) return std::nullopt;
            throw;
        }
        return receive_now();
    }

    std::optional<wire::Envelope> receive_now() {
        zmq::message_t msg;
        while (socket_.recv(msg, zmq::recv_flags::dontwait)) {
            auto env = wire::decode(msg.to_string_view());
            if (env) return std::move(env).value();
            // A head that sends garbage is a bug or an attack; say so once per message.
            log::warning("ignoring a message from the head: {} ({})", env.error().message, env.error().code);
        }
        return std::nullopt;
    }

private:
    zmq::context_t context_;
    zmq::socket_t socket_;
    const RankOptions& options_;
};

}  // namespace

std::optional<RankOptions> parse_rank_options(int argc, char** argv) {
    RankOptions o;
    bool have_connect = false, have_rank = false;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
        auto need = [&](const char* name) {
            if (!value) std::fprintf(stderr, "dpengine-rank: option '%s' needs a value\n", name);
            return value != nullptr;
        };
        bool ok = true;
        if (arg == "--connect" && need("--connect")) {
            o.connect = value, have_connect = true;
        } else if (arg == "--rank" && need("--rank")) {
            ok = parse_number(value, o.rank), have_rank = true;
        } else if (arg == "--local-rank" && need("--local-rank")) {
            ok = parse_number(value, o.local_rank);
        } else if (arg == "--node" && need("--node")) {
            o.node = value;
        } else if (arg == "--connect-timeout" && need("--connect-timeout")) {
            ok = parse_number(value, o.connect_timeout) && o.connect_timeout > 0;
        } else if (arg == "--max-message-bytes" && need("--max-message-bytes")) {
            ok = parse_number(value, o.max_message_bytes);
        } else {
            std::fprintf(stderr, "dpengine-rank: unknown or incomplete option '%s'; this program is started by dpengined\n", argv[i]);
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
    return o;
}

int run_rank(const RankOptions& options) {
    log::set_identity("rank " + std::to_string(options.rank));
    install_signal_handlers();
    try {
        Connection conn(options);
        wire::Hello hello;
        hello.rank = options.rank;
        hello.local_rank = options.local_rank;
        hello.node = options.node;
        hello.incarnation = random_u64();
        hello.build = DPENGINE_VERSION;
        conn.send(hello, 0);

        // connecting: wait for CONFIG (or REFUSED)
        auto deadline = Clock::now() + std::chrono::duration<double>(options.connect_timeout);
        wire::Config config;
        for (;;) {
            if (stop_requested) return exit_code::ok;
            if (Clock::now() > deadline) {
                log::error("no CONFIG from the head at {} within {} s; is dpengined running there?",
                           options.connect, options.connect_timeout);
                return exit_code::unreachable;
            }
            auto env = conn.receive(std::chrono::milliseconds(200));
            if (!env) continue;
            if (auto* c = std::get_if<wire::Config>(&env->message)) {
                config = std::move(*c);
                break;
            }
            if (auto* r = std::get_if<wire::Refused>(&env->message)) {
                log::error("the head refused rank {}: {} ({})", options.rank, r->message, r->code);
                return exit_code::refused;
            }
        }
        const uint64_t epoch = config.epoch;

        // initializing: build the backend
        auto backend = make_backend(config.engine);
        if (!backend) {
            log::error("{}", backend.error().message);
            conn.send(wire::ErrorReply{"init-failed", backend.error().message}, epoch);
            return exit_code::config;
        }
        StepLoop loop(std::move(backend).value(), config.engine.max_batch, config.engine.max_model_len);
        conn.send(wire::Ready{config.engine.max_batch, loop.backend().device()}, epoch);
        log::info("ready: DP rank {} of {}, {} backend on {}", options.rank, config.dp_size,
                  config.engine.backend, loop.backend().device());

        // ready: the step loop
        const auto heartbeat_every = std::chrono::duration_cast<Clock::duration>(
            std::chrono::duration<double>(config.heartbeat_interval > 0 ? config.heartbeat_interval : 1.0));
        auto next_heartbeat = Clock::now() + heartbeat_every;
        wire::Outputs outputs;
        while (!stop_requested) {
            auto now = Clock::now();
            auto wait = loop.has_work() ? Clock::duration::zero()
                                        : std::max(Clock::duration::zero(), next_heartbeat - now);
            auto env = conn.receive(std::chrono::duration_cast<std::chrono::milliseconds>(wait));
            for (; env; env = conn.receive_now()) {
                if (auto* add = std::get_if<wire::Add>(&env->message)) {
                    loop.add(*add);
                } else if (auto* abort = std::get_if<wire::Abort>(&env->message)) {
                    for (uint64_t id : abort->ids) loop.abort(id);
                } else if (std::holds_alternative<wire::Shutdown>(env->message)) {
                    return exit_code::ok;
                } else if (auto* err = std::get_if<wire::ErrorReply>(&env->message)) {
                    log::warning("the head reports: {} ({})", err->message, err->code);
                }
            }
            if (loop.has_work()) {
                outputs.items.clear();
                loop.step(outputs);
                if (!outputs.items.empty()) conn.send(outputs, epoch);
                next_heartbeat = Clock::now() + heartbeat_every;
            } else if (Clock::now() >= next_heartbeat) {
                conn.send(wire::Heartbeat{loop.steps(), loop.running(), loop.waiting()}, epoch);
                next_heartbeat = Clock::now() + heartbeat_every;
            }
        }
        return exit_code::ok;
    } catch (const zmq::error_t& e) {
        log::error("ZeroMQ failure talking to {}: {}", options.connect, e.what());
        return exit_code::failure;
    }
}

}  // namespace dpengine::engine
