// dpengine-curve-throughput: one-way throughput of DEALER → ROUTER links over loopback TCP, the
// shape of a rank's link to the head, with NULL or CURVE security, in the daemon's settings or
// in plain libzmq's.
//
// A link is STACK:MECHANISM:IO_THREADS:BYTES, e.g. ours:curve:1:1024.
//   ours  the daemon's own code and settings: transport::configure() on both sockets, the head's
//         ROUTER options (router_mandatory; with CURVE: curve_server, the "dpengine" ZAP domain
//         and a dpengine::ZapHandler thread that admits the one client key) and the rank's
//         DEALER options (immediate, reconnect intervals; with CURVE its key pair and the head's
//         public key), keys from keys::generate(). See daemon/head/rank_link.cpp,
//         daemon/head/zap_handler.cpp, daemon/engine/rank.cpp and daemon/core/transport.cpp.
//   raw   plain libzmq: default socket options; with CURVE only the keys, no ZAP handler.
// Each side of a link has its own thread and its own context with IO_THREADS I/O threads (head
// and rank are separate processes).
//
// Every link is set up first. Then the links take turns: --rounds times, each link in turn
// (the order reversed every other round) sends for --slice seconds while the others sit idle.
// On a shared machine whose load drifts, the links so see the same conditions, and the ratio of
// two links' rates means more than two separate runs would. The DEALER pipelines messages of
// BYTES bytes, at most a window of about 4 MiB (16 to 1024 messages) in flight; the ROUTER
// acknowledges every quarter window with the count received so far. That keeps the queues
// bounded (the daemon's high water marks of 100000 messages would let a 64 KiB sender queue
// gigabytes). A slice ends with a marker the ROUTER answers once everything before it arrived,
// so each slice counts delivered messages only.
//
// Output, per link: "LINK.messages_per_s", "LINK.mb_per_s" (MB = 10^6 bytes, over all slices),
// "LINK.median_slice_mb_per_s", "LINK.best_slice_mb_per_s", "LINK.slices_mb_per_s" (each slice,
// in the order they ran, so slices of different links in the same round can be paired), and
// "LINK.cpu_util" and "LINK.slices_cpu_util" (this process's CPU seconds per second while that
// link ran: both of its sides, as the other links are idle).
#include "core/config.hpp"
#include "core/keys.hpp"
#include "core/transport.hpp"
#include "head/zap_handler.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>
#include <zmq.hpp>

namespace {

using Clock = std::chrono::steady_clock;

const uint32_t max_message_bytes = dpengine::Config{}.daemon.max_message_bytes;

// Ends the process at once: receiver threads may be blocked in recv().
[[noreturn]] void fail(const std::string& message) {
    std::fprintf(stderr, "dpengine-curve-throughput: %s\n", message.c_str());
    std::fflush(stderr);
    std::_Exit(1);
}

double cpu_seconds() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

struct Spec {
    std::string name;
    bool ours = true;
    bool curve = true;
    int io_threads = 1;
    size_t size = 1024;
};

std::optional<Spec> parse_spec(std::string_view text) {
    Spec s;
    s.name = text;
    std::vector<std::string> parts;
    size_t start = 0;
    for (;;) {
        size_t colon = text.find(':', start);
        parts.emplace_back(text.substr(start, colon == std::string_view::npos ? colon : colon - start));
        if (colon == std::string_view::npos) break;
        start = colon + 1;
    }
    if (parts.size() != 4) return std::nullopt;
    if (parts[0] != "ours" && parts[0] != "raw") return std::nullopt;
    if (parts[1] != "null" && parts[1] != "curve") return std::nullopt;
    s.ours = parts[0] == "ours";
    s.curve = parts[1] == "curve";
    s.io_threads = std::atoi(parts[2].c_str());
    s.size = std::strtoul(parts[3].c_str(), nullptr, 10);
    if (s.io_threads < 1 || s.io_threads > 16 || s.size == 0 || s.size > max_message_bytes) return std::nullopt;
    return s;
}

// A data message is one frame; a control message two: an empty frame, then 'S' (answer with 'S'
// and the count: the end of a slice) or 'Q' (quit, no answer).
void send_count(zmq::socket_t& router, const zmq::message_t& id, uint64_t count) {
    router.send(zmq::buffer(id.data(), id.size()), zmq::send_flags::sndmore);
    router.send(zmq::buffer(&count, sizeof count), zmq::send_flags::none);
}

class Link {
public:
    explicit Link(Spec spec) : spec_(std::move(spec)) {
        window_ = static_cast<uint32_t>(std::clamp<size_t>((4u << 20) / spec_.size, 16, 1024));
        ack_every_ = std::max<uint32_t>(1, window_ / 4);
        if (spec_.curve) make_keys();
        std::promise<std::string> bound;
        auto endpoint = bound.get_future();
        receiver_ = std::thread([this, b = std::move(bound)]() mutable { receive(std::move(b)); });
        try {
            endpoint_ = endpoint.get();
        } catch (const std::exception& e) {
            fail(spec_.name + ": " + e.what());
        }
        context_ = std::make_unique<zmq::context_t>(spec_.io_threads);
        dealer_ = std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::dealer);
        auto& d = *dealer_;
        if (spec_.ours) {
            dpengine::transport::configure(d, max_message_bytes);
            d.set(zmq::sockopt::immediate, 1);
            d.set(zmq::sockopt::reconnect_ivl, 500);
            d.set(zmq::sockopt::reconnect_ivl_max, 2000);
        }
        if (spec_.curve) {
            d.set(zmq::sockopt::curve_serverkey, server_public_);
            d.set(zmq::sockopt::curve_publickey, client_public_);
            d.set(zmq::sockopt::curve_secretkey, client_secret_);
        }
        d.set(zmq::sockopt::rcvtimeo, 20000);  // a refused handshake fails instead of hanging
        // Connection events, to say why a link failed (a monitor costs nothing per message; the
        // rank's DEALER has one too).
        static int links = 0;
        std::string monitor_endpoint = "inproc://monitor-" + std::to_string(links++);
        if (zmq_socket_monitor(d.handle(), monitor_endpoint.c_str(),
                               ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_CONNECT_RETRIED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH |
                                   ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                   ZMQ_EVENT_HANDSHAKE_SUCCEEDED) != 0) {
            fail(spec_.name + ": zmq_socket_monitor failed");
        }
        monitor_ = std::make_unique<zmq::socket_t>(*context_, zmq::socket_type::pair);
        monitor_->connect(monitor_endpoint);
        d.connect(endpoint_);
        payload_.resize(spec_.size);
        for (size_t i = 0; i < payload_.size(); ++i) payload_[i] = static_cast<char>(i * 131 + 7);
    }

    ~Link() {
        // No answer to wait for: with linger 0 (ours) the receiver's socket drops it on close.
        dealer_->send(zmq::message_t(), zmq::send_flags::sndmore);
        dealer_->send(zmq::str_buffer("Q"), zmq::send_flags::none);
        receiver_.join();
        monitor_.reset();
        dealer_.reset();
        context_.reset();
    }

    const Spec& spec() const { return spec_; }
    uint32_t window() const { return window_; }

    // Sends for `seconds`, then waits until everything sent has arrived. Returns the messages
    // delivered and the seconds from the first send to the last acknowledgement.
    std::pair<uint64_t, double> slice(double seconds) {
        auto start = Clock::now();
        auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
        uint64_t sent = 0, acked = 0;
        while (Clock::now() < end) {
            while (sent - acked < window_) {
                dealer_->send(zmq::buffer(payload_), zmq::send_flags::none);
                ++sent;
            }
            uint64_t n = recv_count();
            if (n == 0) link_failed("no acknowledgement within 20 s");
            acked = n - base_;
        }
        uint64_t total = control('S') - base_;
        if (total != sent)
            fail(spec_.name + ": " + std::to_string(sent) + " sent, " + std::to_string(total) + " arrived");
        base_ += total;
        return {total, std::chrono::duration<double>(Clock::now() - start).count()};
    }

private:
    [[noreturn]] void link_failed(const std::string& what) {
        std::string events;
        zmq::message_t head, address;
        while (monitor_->recv(head, zmq::recv_flags::dontwait)) {
            uint16_t id = 0;
            if (head.size() >= 2) std::memcpy(&id, head.data(), 2);
            if (head.more()) (void)monitor_->recv(address, zmq::recv_flags::none);
            const char* name = id == ZMQ_EVENT_DISCONNECTED ? "disconnected"
                : id == ZMQ_EVENT_CONNECT_RETRIED           ? "connect-retried"
                : id == ZMQ_EVENT_HANDSHAKE_SUCCEEDED       ? "handshake-succeeded"
                                                            : "handshake-failed";
            events += events.empty() ? name : std::string(", ") + name;
        }
        fail(spec_.name + ": " + what + " (connection events: " + (events.empty() ? "none" : events) + ")");
    }

    void make_keys() {
        if (spec_.ours) {
            auto server = dpengine::keys::generate();
            auto client = dpengine::keys::generate();
            if (!server || !client) fail((!server ? server.error() : client.error()).message);
            server_public_ = server->public_z85, server_secret_ = server->secret_z85;
            client_public_ = client->public_z85, client_secret_ = client->secret_z85;
        } else {
            char pub[41], sec[41];
            if (zmq_curve_keypair(pub, sec) != 0) fail("zmq_curve_keypair failed");
            server_public_ = pub, server_secret_ = sec;
            if (zmq_curve_keypair(pub, sec) != 0) fail("zmq_curve_keypair failed");
            client_public_ = pub, client_secret_ = sec;
        }
    }

    // The next acknowledgement (data or control); 0 when none came within the timeout.
    uint64_t recv_count() {
        zmq::message_t ack;
        uint64_t n = 0;
        if (dealer_->recv(ack, zmq::recv_flags::none) && ack.size() == sizeof n) std::memcpy(&n, ack.data(), sizeof n);
        return n;
    }

    // Sends a control message and returns the receiver's total count (acknowledgements of data
    // sent before it arrive first and are skipped: counts only grow).
    uint64_t control(char what) {
        dealer_->send(zmq::message_t(), zmq::send_flags::sndmore);
        dealer_->send(zmq::buffer(&what, 1), zmq::send_flags::none);
        for (;;) {
            zmq::message_t ack;
            if (!dealer_->recv(ack, zmq::recv_flags::none)) link_failed("no answer to a control message within 20 s");
            if (ack.more()) continue;
            if (ack.size() == sizeof(uint64_t) + 1 && static_cast<const char*>(ack.data())[0] == what) {
                uint64_t n;
                std::memcpy(&n, static_cast<const char*>(ack.data()) + 1, sizeof n);
                return n;
            }
        }
    }

    // The head's side. Data: count, acknowledge every ack_every_ messages. Control: answer with
    // the marker and the count.
    void receive(std::promise<std::string> bound) {
        try {
            zmq::context_t ctx(spec_.io_threads);
            std::unique_ptr<dpengine::ZapHandler> zap;  // before the socket: it must outlive it
            if (spec_.ours && spec_.curve) {
                zap = std::make_unique<dpengine::ZapHandler>(
                    ctx, std::vector<dpengine::keys::AuthorizedKey>{{client_public_, "bench", std::nullopt}});
            }
            zmq::socket_t router(ctx, zmq::socket_type::router);
            if (spec_.ours) {
                dpengine::transport::configure(router, max_message_bytes);
                router.set(zmq::sockopt::router_mandatory, 1);
            }
            if (spec_.curve) {
                if (spec_.ours) router.set(zmq::sockopt::zap_domain, "dpengine");
                router.set(zmq::sockopt::curve_server, 1);
                router.set(zmq::sockopt::curve_secretkey, server_secret_);
            }
            router.bind("tcp://127.0.0.1:*");
            bound.set_value(router.get(zmq::sockopt::last_endpoint));
            uint64_t received = 0;
            for (;;) {
                zmq::message_t id, payload;
                if (!router.recv(id, zmq::recv_flags::none)) continue;
                if (!id.more() || !router.recv(payload, zmq::recv_flags::none)) continue;
                if (payload.more()) {
                    zmq::message_t what;
                    (void)router.recv(what, zmq::recv_flags::none);
                    char reply[1 + sizeof received];
                    reply[0] = what.size() == 1 ? static_cast<const char*>(what.data())[0] : '?';
                    if (reply[0] == 'Q') break;
                    std::memcpy(reply + 1, &received, sizeof received);
                    router.send(zmq::buffer(id.data(), id.size()), zmq::send_flags::sndmore);
                    router.send(zmq::buffer(reply, sizeof reply), zmq::send_flags::none);
                    continue;
                }
                if (++received % ack_every_ == 0) send_count(router, id, received);
            }
        } catch (...) {
            try {
                bound.set_exception(std::current_exception());
            } catch (const std::future_error&) {
                fail(spec_.name + ": the receiver failed");
            }
        }
    }

    Spec spec_;
    uint32_t window_ = 0, ack_every_ = 0;
    std::string server_public_, server_secret_, client_public_, client_secret_;
    std::string endpoint_;
    std::thread receiver_;
    std::unique_ptr<zmq::context_t> context_;
    std::unique_ptr<zmq::socket_t> dealer_;
    std::unique_ptr<zmq::socket_t> monitor_;
    std::string payload_;
    uint64_t base_ = 0;  // the receiver's count at the start of the current slice
};

struct Totals {
    uint64_t messages = 0;
    double seconds = 0, cpu = 0;
    std::vector<double> slice_mb_per_s;
    std::vector<double> slice_cpu_util;
};

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<Spec> specs;
    int rounds = 5;
    double slice = 0.2, warmup = 0.1;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto val = [&]() -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "dpengine-curve-throughput: %s needs a value\n", argv[i]);
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--link") {
            auto spec = parse_spec(val());
            if (!spec) {
                std::fprintf(stderr,
                             "dpengine-curve-throughput: --link is STACK:MECHANISM:IO_THREADS:BYTES "
                             "(ours|raw, null|curve), e.g. ours:curve:1:1024\n");
                return 2;
            }
            specs.push_back(*spec);
        } else if (a == "--rounds") rounds = std::max(1, std::atoi(val()));
        else if (a == "--slice") slice = std::atof(val());
        else if (a == "--warmup") warmup = std::atof(val());
        else {
            std::fprintf(stderr,
                         "usage: dpengine-curve-throughput --link STACK:MECHANISM:IO_THREADS:BYTES [--link ...] "
                         "[--rounds N] [--slice S] [--warmup S]\n");
            return 2;
        }
    }
    if (specs.empty()) {
        for (const char* s : {"ours:null:1:1024", "ours:curve:1:1024", "raw:null:1:1024", "raw:curve:1:1024"}) {
            specs.push_back(*parse_spec(s));
        }
    }
    try {
        std::vector<std::unique_ptr<Link>> links;
        for (const auto& s : specs) links.push_back(std::make_unique<Link>(s));
        // Connections, CURVE handshakes (through the ZAP handler) and warm caches first.
        for (auto& l : links) (void)l->slice(warmup);
        std::vector<Totals> totals(links.size());
        for (int r = 0; r < rounds; ++r) {
            for (size_t k = 0; k < links.size(); ++k) {
                size_t i = r % 2 == 0 ? k : links.size() - 1 - k;
                double cpu0 = cpu_seconds();
                auto [messages, seconds] = links[i]->slice(slice);
                auto& t = totals[i];
                double cpu = cpu_seconds() - cpu0;
                t.cpu += cpu;
                t.slice_cpu_util.push_back(cpu / seconds);
                t.messages += messages;
                t.seconds += seconds;
                t.slice_mb_per_s.push_back(messages * links[i]->spec().size / seconds / 1e6);
            }
        }
        std::printf("rounds: %d\nslice_s: %.3f\n", rounds, slice);
        for (size_t i = 0; i < links.size(); ++i) {
            const auto& s = links[i]->spec();
            const auto& t = totals[i];
            std::printf("%s.window: %u\n", s.name.c_str(), links[i]->window());
            std::printf("%s.messages_per_s: %.1f\n", s.name.c_str(), t.messages / t.seconds);
            std::printf("%s.mb_per_s: %.2f\n", s.name.c_str(), t.messages * s.size / t.seconds / 1e6);
            std::printf("%s.median_slice_mb_per_s: %.2f\n", s.name.c_str(), median(t.slice_mb_per_s));
            std::printf("%s.best_slice_mb_per_s: %.2f\n", s.name.c_str(),
                        *std::max_element(t.slice_mb_per_s.begin(), t.slice_mb_per_s.end()));
            std::printf("%s.slices_mb_per_s:", s.name.c_str());
            for (size_t k = 0; k < t.slice_mb_per_s.size(); ++k)
                std::printf("%s%.1f", k ? "," : " ", t.slice_mb_per_s[k]);
            std::printf("\n%s.slices_cpu_util:", s.name.c_str());
            for (size_t k = 0; k < t.slice_cpu_util.size(); ++k)
                std::printf("%s%.3f", k ? "," : " ", t.slice_cpu_util[k]);
            std::printf("\n");
            std::printf("%s.cpu_util: %.3f\n", s.name.c_str(), t.cpu / t.seconds);
        }
        std::fflush(stdout);
        links.clear();
    } catch (const std::exception& e) {
        fail(e.what());
    }
    return 0;
}
