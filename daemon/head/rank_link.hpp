// The head's side of the rank protocol: the handshake (HELLO → CONFIG → READY) over the
// RankSocket every rank connects to, the registry of ranks and their state, and the requests
// in flight: each goes to the rank head/router.hpp picks, and its response pieces come back
// to the front-end as the engine wrote them. Runs on the daemon's event loop, so nothing here
// needs a lock.
#pragma once

#include "core/config.hpp"
#include "core/reason.hpp"
#include "core/error.hpp"
#include "core/wire.hpp"
#include "head/dp_group_coordinator.hpp"
#include "core/log_throttle.hpp"
#include "head/loop_stall.hpp"
#include "head/rank_info.hpp"
#include "head/refusal_limiter.hpp"
#include "head/router.hpp"
#include "head/step_rate.hpp"
#include "head/rank_socket.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>
#include <zmq.hpp>

namespace dpengine {

// Where a request's response goes (the HTTP exchange that asked).
class RequestSink {
public:
    virtual ~RequestSink() = default;
    // A piece of the engine's response; the one with `done` is the last call.
    virtual void on_output(const wire::Output& piece) = 0;
    // The request ended without its response; no further calls follow for it.
    virtual void on_failure(const Error& error) = 0;
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
        // The last request in flight on a rank ended (answered, failed, aborted or moved).
        // Called from inside the link's bookkeeping: a listener that acts on the link posts.
        std::function<void(uint32_t rank)> rank_idle;
    };

    RankLink(boost::asio::io_context& io, const Config& config, Events events);
    ~RankLink();

    Status bind(const std::string& endpoint);
    const std::string& endpoint() const { return socket_.endpoint(); }

    // Front-end: sends the request to the rank the load policy picks. Fails when no rank can
    // take it. The sink must stay valid until the request finishes, fails, or is aborted.
    // TOKEN_LIMIT: the completion tokens the request allows (its max_tokens times its
    // choices), when its body says; a rank that sends more, or more than
    // frontend.max_response_bytes, fails the request (rank-misbehaved).
    Result<uint64_t> submit(wire::Request request, RequestSink* sink,
                            std::optional<uint64_t> token_limit = std::nullopt);
    // The client went away: forget the request and tell its rank to stop working on it.
    void abort(uint64_t id);

    // Supervisor: a local rank's process was started, or exited.
    void rank_spawned(uint32_t rank);
    // `pid`: the process that exited. A registration made by another process keeps the rank.
    void rank_exited(uint32_t rank, uint32_t pid, const std::string& cause);
    // The rank will not come back by itself (e.g. its restart budget is spent).
    void rank_failed(uint32_t rank, const std::string& reason, ReasonCode code);

    // Operator actions. A draining rank gets no new requests and finishes the ones it has.
    // until_undrain: an operator's drain, which holds until undrain(), also for the processes
    // that replace this one (a crash, a restart); otherwise the drain ends with the process
    // (a stop or a move drains first).
    Status drain(uint32_t rank, bool until_undrain = false);
    Status undrain(uint32_t rank);
    // The rank is being stopped on purpose: tell it to exit, and fail nothing (it was drained);
    // what is still in flight ends with the cause.
    struct StopCause {
        std::string reason = "was stopped by an operator";
        ReasonCode code = Reason::rank_stopped;
    };
    void stop(uint32_t rank, const StopCause& cause);
    void stop(uint32_t rank) { stop(rank, StopCause{}); }
    uint32_t in_flight_on(uint32_t rank) const { return rank < ranks_.size() ? ranks_[rank].info.in_flight : 0; }

    // Shutdown: fail what is still in flight and tell connected ranks to exit.
    void shutdown();

    uint32_t ready_count() const { return ready_count_; }
    // Whether enough ranks are READY to serve (data_parallel.min_ranks).
    bool has_quorum() const { return ready_count_ >= std::max<uint32_t>(1, config_.data_parallel.min_ranks); }
    // The ranks that are not READY, as "rank 2 (connecting, node 'b')", for /health and the log.
    std::vector<std::string> missing_ranks() const;
    uint64_t epoch() const { return epoch_; }
    size_t in_flight() const { return requests_.size(); }
    uint32_t size() const { return static_cast<uint32_t>(ranks_.size()); }
    std::vector<RankInfo> ranks() const;
    std::optional<RankInfo> rank_info(uint32_t rank) const;  // one of ranks(); nullopt past the DP size
    // Re-reads security.authorized_keys (config reload). Fails, changing nothing, on a bad file.
    Status reload_authorized_keys() { return socket_.reload_authorized_keys(); }
    // Refused handshakes and connections by reason code (the ZAP handler's included).
    std::map<std::string, uint64_t> refusals() const;

    // ---- the node link: NODE_* messages arrive on the same socket and go to the registry ----
    // key_node: the node name CURVE authenticated ("" without CURVE); peer: the peer's address.
    using NodeMessageHandler = std::function<void(const std::string& routing_id, const wire::Envelope& envelope,
                                                  const std::string& key_node, const std::string& peer)>;
    void set_node_handler(NodeMessageHandler handler) { node_handler_ = std::move(handler); }
    bool send_to(const std::string& routing_id, const wire::Message& message) { return send(routing_id, message); }
    void refuse_peer(const std::string& routing_id, ReasonCode code, const std::string& message) {
        refuse(routing_id, code, message);
    }
    // The node allowed to register a rank ("": none; a key's ranks= may claim it). The head
    // owns its local block from the start; the registry gives blocks to nodes and moves them.
    void set_owner(uint32_t rank, const std::string& node);
    std::string owner_of(uint32_t rank) const { return rank < ranks_.size() ? ranks_[rank].owner : std::string(); }
    RankState state_of(uint32_t rank) const {
        return rank < ranks_.size() ? ranks_[rank].info.state : RankState::stopped;
    }
    // A new placement of ranks took effect.
    uint64_t bump_epoch() { return ++epoch_; }
    // A node registers with the epoch it last knew (a previous head's): never go back.
    void raise_epoch(uint64_t at_least) { epoch_ = std::max(epoch_, at_least); }
    // security.authorized_keys: the ranks=A-B of the node's key, when CURVE is on and it has one.
    std::optional<std::pair<uint32_t, uint32_t>> key_ranks(const std::string& node) const;
    // security.authorized_keys as the head uses it now (empty without CURVE).
    std::vector<keys::AuthorizedKey> authorized_keys() const { return socket_.authorized_keys(); }

private:
    friend struct RankLinkFuzzAccess;  // tests/fuzz/fuzz_handshake.cpp feeds on_message directly
    struct Slot {
        RankInfo info;
        std::string routing_id;  // the connection, once HELLO was accepted
        uint64_t incarnation = 0;
        uint32_t pid = 0;                                  // as its HELLO stated
        std::chrono::steady_clock::time_point deadline{};  // of the current handshake phase
        std::chrono::steady_clock::time_point last_heard{};
        // The rank's progress counter as its heartbeats last reported it, and since when the
        // head has seen it stand still with requests in flight there (handshake.hang_timeout).
        uint64_t progress = 0;
        std::chrono::steady_clock::time_point progress_at{};
        StepRate step_rate;           // steps per second and dummy share, from the heartbeats
        bool lost_before = false;     // READY after a loss counts as "rejoined"
        bool spawned_before = false;  // a second spawn counts as "restarted"
        bool drain_held = false;      // drained by an operator: READY leads to draining, not ready
        std::string owner;            // the node that first registered this rank (CURVE: its key's name)
    };
    struct InFlight {
        uint32_t rank;
        RequestSink* sink;
        head::RetryState retry;
        wire::Request request;                // kept to move it to another rank if this one is lost first
        std::optional<uint64_t> token_limit;  // see submit()
        uint64_t tokens = 0;                  // of the response so far
        uint64_t bytes = 0;
    };
    // The rank the load policy picks, other than `except`, or nothing.
    Slot* pick_rank(std::optional<uint32_t> except = std::nullopt);
    // A heartbeat's load and health figures.
    void note_load(Slot& slot, const wire::Heartbeat& heartbeat);

    void on_message(const std::string& routing_id, zmq::message_t& payload);
    void on_hello(const std::string& routing_id, const wire::Hello& hello, const std::string& node);
    // Why `node` may not register `rank` (its reason code and message), or nothing.
    std::optional<Error> ownership_problem(uint32_t rank, const std::string& node) const;
    // Whether `node` holds ranks: a block the head gave it, or a ranks= reservation.
    bool holds_ranks(const std::string& node) const;
    // False when a connection got its share of answers for now (handshake.refusal_rate_limit).
    bool may_answer_unregistered(const std::string& routing_id);
    std::string describe_node(const std::string& node) const;
    void on_outputs(Slot& slot, const wire::Outputs& outputs);
    // What is wrong with PIECE, the next of REQUEST's response, counted into it: more tokens
    // or bytes than the request allows; empty when nothing is.
    std::string output_problem(InFlight& request, const wire::Output& piece) const;
    // The rank broke the protocol with request ID: fail it to its client, abort it on the rank.
    void fail_request_of_misbehaving_rank(Slot& slot, uint64_t id, const std::string& problem);
    void refuse(const std::string& routing_id, ReasonCode code, const std::string& message);
    bool send(const std::string& routing_id, const wire::Message& message);
    void set_state(Slot& slot, RankState state);
    void fail_rank(Slot& slot, const std::string& reason, ReasonCode code);
    void check_deadlines();
    void excuse_own_stall(std::chrono::steady_clock::time_point now);
    void connection_gone(const std::string& routing_id);
    // The head has had requests in flight on the rank for handshake.hang_timeout while its
    // progress counter stood still.
    bool is_hung(Slot& slot, std::chrono::steady_clock::time_point now);
    // A heartbeat's status figures (wave, memory, step counters for the step rate).
    void note_activity(Slot& slot, const wire::Heartbeat& heartbeat);
    void count_event(Slot& slot, ReasonCode reason) { ++slot.info.events[reason]; }
    // One of the slot's requests ended there; tells events_.rank_idle when it was the last.
    void request_left(Slot& slot);

    // The DP group (lockstep mode) is group_'s (head/dp_group_coordinator.hpp): the head keeps
    // the group's rendezvous store, re-forms the group (bumping the epoch) when the set of
    // serving ranks changes or a member reports it failed, and relays waves.
    bool lockstep() const { return group_.lockstep(); }
    void fill_gpu_config(wire::EngineConfig& engine) const;
    DpGroupCoordinator::Peers group_peers();

    boost::asio::io_context& io_;
    const Config& config_;
    Events events_;
    RankSocket socket_;
    boost::asio::steady_timer deadline_timer_;
    LoopStall loop_stall_;  // how late check_deadlines() runs
    // Until then, connections that turn out gone were dropped during this daemon's stall.
    std::chrono::steady_clock::time_point stall_recovery_until_{};
    bool shutting_down_ = false;
    uint64_t epoch_ = 1;
    uint64_t next_id_ = 1;
    uint32_t ready_count_ = 0;
    head::LoadPolicy load_policy_;
    std::vector<head::RouteCandidate> candidates_;  // reused by every pick
    std::vector<Slot> ranks_;
    std::unordered_map<std::string, uint32_t> rank_of_connection_;
    std::unordered_map<uint64_t, InFlight> requests_;
    std::map<std::string, uint64_t> refusals_;
    std::string send_buffer_;
    NodeMessageHandler node_handler_;

    // The DP group (lockstep mode).
    DpGroupCoordinator group_;
    // Ranks owned per node (Slot::owner), so that holds_ranks() costs no scan per message.
    std::unordered_map<std::string, uint32_t> owned_count_;
    // Refusals per peer (address, and the key's node under CURVE), to mute a peer that keeps
    // getting refused; a node that holds ranks is never muted.
    RefusalLimiter refusal_limiter_;
    // Answers per connection to messages that need a registration first (not-registered).
    RefusalLimiter unregistered_answers_;
    std::string message_routing_id_;  // the connection and address of the message on_message handles
    std::string message_peer_;
    size_t message_items_ = 1;  // the work the message on_message handles takes (RankSocket's budget)
    LogThrottle log_throttle_;  // warnings about ranks that break the protocol
};

}  // namespace dpengine
