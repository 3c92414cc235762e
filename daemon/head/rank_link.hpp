// The head's side of the rank protocol: the ROUTER socket every rank connects to, the
// handshake (HELLO → CONFIG → READY), the registry of ranks and their state, and the routing
// of requests to ranks and of their outputs back to the front-end. Runs on the daemon's event
// loop; ZeroMQ's notification fd is watched by asio, so nothing here needs a lock.
#pragma once

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/wire.hpp"
#include "head/handshake_monitor.hpp"
#include "head/refusal_limiter.hpp"
#include "head/zap_handler.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>
#include <zmq.hpp>

namespace dpengine {

// Where a request's results go (the HTTP exchange that asked). `choice` is the index the
// front-end gave at submit().
class RequestSink {
public:
    virtual ~RequestSink() = default;
    virtual void on_output(uint32_t choice, const wire::Output& output) = 0;
    // The request ended without finishing; no further calls follow for it.
    virtual void on_failure(uint32_t choice, const Error& error) = 0;
};

enum class RankState { starting, connecting, initializing, ready, draining, stopped, failed };
const char* to_string(RankState state);

struct RankInfo {
    uint32_t rank = 0;
    RankState state = RankState::starting;
    std::string node;
    std::string device;
    uint32_t in_flight = 0;
    uint32_t running = 0;  // as the rank last reported
    uint32_t waiting = 0;
    uint64_t served = 0;
    uint64_t tokens = 0;
    std::string last_error;
    std::string reason;    // the reason code of last_error
    uint32_t pid = 0;      // filled in by the node that runs the rank
    uint64_t restarts = 0; // likewise
};

class RankLink {
public:
    struct Events {
        std::function<void()> ready_count_changed;
        // A rank's state or last error changed (for status and change signals).
        std::function<void(uint32_t rank)> rank_changed;
        // A rank missed a handshake deadline or went silent; if it is local, the supervisor
        // should kill it (and its restart policy takes over).
        std::function<void(uint32_t rank)> deadline_missed;
    };

    RankLink(boost::asio::io_context& io, const Config& config, Events events);
    ~RankLink();

    Status bind(const std::string& endpoint);
    const std::string& endpoint() const { return endpoint_; }

    // Front-end: sends the request to the least-loaded READY rank. Fails when none is READY.
    // The sink must stay valid until the request finishes, fails, or is aborted.
    Result<uint64_t> submit(wire::Add request, RequestSink* sink, uint32_t choice);
    // The client went away: forget the request and tell its rank to stop working on it.
    void abort(uint64_t id);

    // Supervisor: a local rank's process was started, or exited.
    void rank_spawned(uint32_t rank);
    void rank_exited(uint32_t rank, const std::string& cause);
    // The rank will not come back by itself (e.g. its restart budget is spent).
    void rank_failed(uint32_t rank, const std::string& reason, const std::string& code);

    // Operator actions. A draining rank gets no new requests and finishes the ones it has.
    Status drain(uint32_t rank);
    Status undrain(uint32_t rank);
    // The rank is being stopped on purpose: tell it to exit, and fail nothing (it was drained).
    void stop(uint32_t rank);
    uint32_t in_flight_on(uint32_t rank) const { return rank < ranks_.size() ? ranks_[rank].info.in_flight : 0; }

    // Shutdown: fail what is still in flight and tell connected ranks to exit.
    void shutdown();

    uint32_t ready_count() const { return ready_count_; }
    uint64_t epoch() const { return epoch_; }
    size_t in_flight() const { return requests_.size(); }
    uint32_t size() const { return static_cast<uint32_t>(ranks_.size()); }
    std::vector<RankInfo> ranks() const;
    // Re-reads security.authorized_keys (config reload). Fails, changing nothing, on a bad file.
    Status reload_authorized_keys();
    // Refused handshakes and connections by reason code (the ZAP handler's included).
    std::map<std::string, uint64_t> refusals() const;

private:
    friend struct RankLinkFuzzAccess;  // tests/fuzz/fuzz_handshake.cpp feeds on_message directly
    struct Slot {
        RankInfo info;
        std::string routing_id;  // the connection, once HELLO was accepted
        uint64_t incarnation = 0;
        std::chrono::steady_clock::time_point deadline{};  // of the current handshake phase
        std::chrono::steady_clock::time_point last_heard{};
        std::string owner;  // the node that first registered this rank (CURVE: its key's name)
    };
    struct InFlight {
        uint32_t rank;
        RequestSink* sink;
        uint32_t choice;
        bool started = false;   // some output reached the client: it cannot move to another rank
        bool requeued = false;  // moved once already after its rank was lost
        wire::Add request;      // kept to move it to another rank if this one is lost first
    };
    // The least-loaded READY rank other than `except`, or nothing.
    Slot* pick_rank(uint32_t except);

    void arm();
    void drain();
    void schedule_drain();
    Status start_security();
    Result<std::vector<keys::AuthorizedKey>> allow_list() const;
    void on_message(const std::string& routing_id, zmq::message_t& payload);
    void on_hello(const std::string& routing_id, const wire::Hello& hello, const std::string& node);
    std::string ownership_problem(uint32_t rank, const std::string& node) const;
    std::string describe_node(const std::string& node) const;
    void on_outputs(Slot& slot, const wire::Outputs& outputs);
    void refuse(const std::string& routing_id, const std::string& code, const std::string& message);
    bool send(const std::string& routing_id, const wire::Message& message);
    void set_state(Slot& slot, RankState state);
    void fail_rank(Slot& slot, const std::string& reason, const std::string& code);
    void check_deadlines();

    boost::asio::io_context& io_;
    const Config& config_;
    Events events_;
    zmq::context_t context_;
    std::unique_ptr<ZapHandler> zap_;  // before router_: it must outlive the socket it vets
    zmq::socket_t router_;
    boost::asio::posix::stream_descriptor watcher_;
    boost::asio::steady_timer deadline_timer_;
    std::string endpoint_;
    bool drain_scheduled_ = false;
    bool armed_ = false;
    bool shutting_down_ = false;
    uint64_t epoch_ = 1;
    uint64_t next_id_ = 1;
    uint32_t ready_count_ = 0;
    uint32_t round_robin_ = 0;
    std::vector<Slot> ranks_;
    std::unordered_map<std::string, uint32_t> rank_of_connection_;
    std::unordered_map<uint64_t, InFlight> requests_;
    std::map<std::string, uint64_t> refusals_;
    std::string send_buffer_;
    // Refusals per peer address, to mute a peer that keeps getting refused.
    RefusalLimiter refusal_limiter_;
    std::string message_routing_id_;  // the connection and address of the message on_message handles
    std::string message_peer_;
    // Declared after router_ so that it closes first.
    std::unique_ptr<HandshakeMonitor> handshake_monitor_;
};

}  // namespace dpengine
