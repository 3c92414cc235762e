// dpengine-zmq-roundtrip: the raw ZeroMQ baseline for the head↔rank path. A ROUTER (the head's
// side) echoes every message back to the DEALER (a rank's side) over ipc://, each socket in its
// own thread with its own context (as head and rank are separate processes with one I/O thread
// each), with the socket options the daemon uses (daemon/core/transport.cpp).
//
//   sync       one message in flight: send, wait for the echo, repeat
//   pipelined  --window messages in flight: every echo received sends the next message
//
// Output: "key: value" lines (round trips per second, mean RTT of the synchronous case).
#include <zmq.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <thread>

namespace {

using Clock = std::chrono::steady_clock;

void configure(zmq::socket_t& s) {
    s.set(zmq::sockopt::sndhwm, 100000);
    s.set(zmq::sockopt::rcvhwm, 100000);
    s.set(zmq::sockopt::linger, 0);
}

// The head's side: echo until an empty payload arrives.
void echo_server(const std::string& endpoint, bool* bound_ok) {
    zmq::context_t ctx(1);
    zmq::socket_t router(ctx, zmq::socket_type::router);
    configure(router);
    router.bind(endpoint);
    *bound_ok = true;
    for (;;) {
        zmq::message_t id, payload;
        if (!router.recv(id, zmq::recv_flags::none)) continue;
        if (!router.recv(payload, zmq::recv_flags::none)) continue;
        bool stop = payload.size() == 0;
        router.send(id, zmq::send_flags::sndmore);
        router.send(payload, zmq::send_flags::none);
        if (stop) break;
    }
}

struct Result {
    uint64_t round_trips = 0;
    double seconds = 0;
};

Result run_sync(zmq::socket_t& dealer, const std::string& msg, double duration) {
    Result r;
    auto start = Clock::now();
    auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(duration));
    zmq::message_t reply;
    while (true) {
        // Check the clock every 64 round trips.
        for (int i = 0; i < 64; ++i) {
            dealer.send(zmq::buffer(msg), zmq::send_flags::none);
            (void)dealer.recv(reply, zmq::recv_flags::none);
            ++r.round_trips;
        }
        if (Clock::now() >= end) break;
    }
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    return r;
}

Result run_pipelined(zmq::socket_t& dealer, const std::string& msg, double duration, uint32_t window) {
    Result r;
    auto start = Clock::now();
    auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(duration));
    uint32_t in_flight = 0;
    for (; in_flight < window; ++in_flight) dealer.send(zmq::buffer(msg), zmq::send_flags::none);
    zmq::message_t reply;
    bool sending = true;
    uint64_t n = 0;
    while (in_flight > 0) {
        (void)dealer.recv(reply, zmq::recv_flags::none);
        --in_flight;
        if (sending) {
            ++r.round_trips;
            if ((++n & 255) == 0 && Clock::now() >= end) {
                sending = false;
                r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
                continue;
            }
            dealer.send(zmq::buffer(msg), zmq::send_flags::none);
            ++in_flight;
        }
    }
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    double duration = 2.0;
    uint32_t window = 256;
    size_t size = 64;
    std::string endpoint;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto val = [&]() -> const char* {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "dpengine-zmq-roundtrip: %s needs a value\n", argv[i]);
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--duration") duration = std::atof(val());
        else if (a == "--window") window = static_cast<uint32_t>(std::atoi(val()));
        else if (a == "--size") size = static_cast<size_t>(std::atoi(val()));
        else if (a == "--endpoint") endpoint = val();
        else {
            std::fprintf(stderr,
                         "usage: dpengine-zmq-roundtrip [--duration S (each mode)] [--window N] [--size BYTES] "
                         "[--endpoint ipc://PATH]\n");
            return 2;
        }
    }
    if (size == 0) size = 1;
    if (window == 0) window = 1;
    std::string path;
    if (endpoint.empty()) {
        path = "/tmp/dpengine-zmq-roundtrip-" + std::to_string(getpid()) + ".sock";
        endpoint = "ipc://" + path;
    }
    try {
        bool bound = false;
        std::thread server(echo_server, endpoint, &bound);
        while (!bound) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        zmq::context_t ctx(1);
        zmq::socket_t dealer(ctx, zmq::socket_type::dealer);
        configure(dealer);
        dealer.connect(endpoint);
        std::string msg(size, 'x');
        // Warm up the connection.
        run_sync(dealer, msg, 0.05);
        Result sync = run_sync(dealer, msg, duration);
        Result piped = run_pipelined(dealer, msg, duration, window);
        dealer.send(zmq::message_t(), zmq::send_flags::none);  // stops the server
        zmq::message_t last;
        (void)dealer.recv(last, zmq::recv_flags::none);
        server.join();
        if (!path.empty()) ::unlink(path.c_str());
        std::printf("message_bytes: %zu\n", size);
        std::printf("sync_round_trips_per_s: %.1f\n", sync.round_trips / sync.seconds);
        std::printf("sync_rtt_us: %.2f\n", sync.seconds * 1e6 / sync.round_trips);
        std::printf("window: %u\n", window);
        std::printf("pipelined_round_trips_per_s: %.1f\n", piped.round_trips / piped.seconds);
    } catch (const zmq::error_t& e) {
        std::fprintf(stderr, "dpengine-zmq-roundtrip: %s\n", e.what());
        return 1;
    }
    return 0;
}
