#include "rank_link.hpp"

#include "core/log.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>
#include <unordered_set>

namespace dpengine {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

Clock::duration seconds(double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// A connection's routing id, printable.
std::string hex(std::string_view bytes) {
    std::string out;
    for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
    return out;
}

}  // namespace

std::optional<RankState> rank_state_from_string(std::string_view name) {
    for (auto state : {RankState::starting, RankState::connecting, RankState::initializing, RankState::ready,
                       RankState::unhealthy, RankState::draining, RankState::stopped, RankState::failed}) {
        if (name == to_string(state)) return state;
    }
    return std::nullopt;
}

const char* to_string(RankState state) {
    switch (state) {
        case RankState::starting: return "starting";
        case RankState::connecting: return "connecting";
        case RankState::initializing: return "initializing";
        case RankState::ready: return "ready";
        case RankState::unhealthy: return "unhealthy";
        case RankState::draining: return "draining";
        case RankState::stopped: return "stopped";
        case RankState::failed: return "failed";
    }
    return "unknown";
}

RankLink::RankLink(asio::io_context& io, const Config& config, Events events)
    : io_(io),
      config_(config),
      events_(std::move(events)),
      socket_(io, config,
              {[this](const std::string& id, zmq::message_t& payload) {
                   message_items_ = 1;
                   on_message(id, payload);
                   return message_items_;
               },
               [this](const std::string& id) { connection_gone(id); }}),
      deadline_timer_(io),
      group_(io, config, group_peers()),
      refusal_limiter_(config.handshake.refusal_rate_limit, config.handshake.refusal_mute),
      unregistered_answers_(config.handshake.refusal_rate_limit, config.handshake.refusal_mute) {
    ranks_.resize(config.dp_size());
    for (uint32_t r = 0; r < ranks_.size(); ++r) {
        ranks_[r].info.rank = r;
        ranks_[r].info.state = RankState::starting;
    }
    // The head's own block is its own before any peer can say HELLO: nobody else may claim it.
    const uint32_t first_local = config.first_local_rank();
    for (uint32_t r = first_local; r < ranks_.size() && r - first_local < config.size_local(); ++r) {
        set_owner(r, config.node.name);
    }
}

RankLink::~RankLink() = default;

DpGroupCoordinator::Peers RankLink::group_peers() {
    DpGroupCoordinator::Peers peers;
    peers.send = [this](uint32_t rank, const wire::Message& message) {
        if (rank >= ranks_.size() || ranks_[rank].routing_id.empty()) return false;
        return send(ranks_[rank].routing_id, message);
    };
    // Every rank that serves requests steps in lockstep, draining ones included.
    peers.serving_ranks = [this] {
        std::vector<uint32_t> members;
        for (const Slot& s : ranks_) {
            bool serving = s.info.state == RankState::ready || s.info.state == RankState::draining;
            if (serving && !s.routing_id.empty()) members.push_back(s.info.rank);
        }
        return members;
    };
    peers.epoch = [this] { return epoch_; };
    peers.bump_epoch = [this] { return bump_epoch(); };
    peers.info = [this](uint32_t rank) { return rank < ranks_.size() ? &ranks_[rank].info : nullptr; };
    // A member that stalled the group's formation is lost as a hung rank is: its process is
    // killed and restarted (within the restart budget); the group forms without it meanwhile.
    peers.fail = [this](uint32_t rank, const std::string& reason, ReasonCode code) {
        if (rank >= ranks_.size() || ranks_[rank].routing_id.empty()) return;
        fail_rank(ranks_[rank], reason, code);
        if (events_.deadline_missed) events_.deadline_missed(rank);
    };
    return peers;
}

void RankLink::fill_gpu_config(wire::EngineConfig& engine) const {
    engine.hidden_size = config_.engine.hidden_size;
    engine.num_layers = config_.engine.num_layers;
    engine.vocab_size = config_.engine.vocab_size;
    engine.gpu_memory_fraction = config_.engine.gpu_memory_fraction;
    engine.gpu_sharing = config_.engine.gpu_sharing;
    engine.gpus.clear();
    for (const auto& gpu : config_.engine.gpus) engine.gpus.push_back(static_cast<uint32_t>(std::stoul(gpu)));
}

Status RankLink::bind(const std::string& endpoint) {
    if (auto bound = socket_.bind(endpoint); !bound) return bound;
    check_deadlines();
    return Ok{};
}

bool RankLink::send(const std::string& routing_id, const wire::Message& message) {
    // A connection that gets its configuration has registered: the registration deadline
    // (handshake.register_timeout) is over for it.
    if (std::holds_alternative<wire::Config>(message) || std::holds_alternative<wire::NodeConfig>(message)) {
        socket_.registered(routing_id);
    }
    send_buffer_ = wire::encode(message, epoch_);
    return socket_.send(routing_id, send_buffer_);
}

bool RankLink::may_answer_unregistered(const std::string& routing_id) {
    auto now = Clock::now();
    unregistered_answers_.configure(config_.handshake.refusal_rate_limit, config_.handshake.refusal_mute);
    if (unregistered_answers_.muted(routing_id, now) || unregistered_answers_.refused(routing_id, now)) {
        ++refusals_[ReasonCode("rate-limited")];
        return false;
    }
    return true;
}

void RankLink::refuse(const std::string& routing_id, ReasonCode code, const std::string& message) {
    ++refusals_[code];
    // Stale traffic from a peer the head has forgotten (a rank declared lost across a
    // partition), and a rank that comes before its node registered, are answered and are no
    // flood: counting them would mute the peer's address just as it registers again. Their
    // answers are limited per connection instead: a flood of them draws no flood of replies.
    if (code == "not-registered" || code == "node-not-registered") {
        if (may_answer_unregistered(routing_id)) send(routing_id, wire::Refused{code, message});
        return;
    }
    if (routing_id == message_routing_id_) {
        refusal_limiter_.configure(config_.handshake.refusal_rate_limit, config_.handshake.refusal_mute);
        if (refusal_limiter_.refused(message_peer_, Clock::now())) {
            log::warning("ignoring {} for {}s: refused more than {} times within a second (rate-limited)",
                         message_peer_, config_.handshake.refusal_mute, config_.handshake.refusal_rate_limit);
        }
    }
    send(routing_id, wire::Refused{code, message});
}

void RankLink::on_message(const std::string& routing_id, zmq::message_t& payload) {
    // A stopping head takes no registrations: ranks of other nodes would only have to do it
    // again with the next head.
    if (shutting_down_) return;
    auto known = rank_of_connection_.find(routing_id);
    message_routing_id_.clear();  // refusals count against a peer only while it is unregistered
    if (known == rank_of_connection_.end()) {
        // A peer refused too often is not answered for a while: its flood costs no replies.
        // Under CURVE the peer is its key's node at its address, so that one key's flood does
        // not mute another node behind the same address; a node that holds ranks is never
        // muted, or its own ranks' retries (or a neighbour's flood) would lock them out.
        std::string address = RankSocket::frame_property(payload, "Peer-Address");
        std::string key_node = RankSocket::frame_property(payload, "User-Id");
        message_peer_ = address.empty() ? "connection " + hex(routing_id) : address;
        if (!key_node.empty()) message_peer_ = key_node + "@" + message_peer_;
        if (key_node.empty() || !holds_ranks(key_node)) {
            if (refusal_limiter_.muted(message_peer_, Clock::now())) {
                ++refusals_[ReasonCode("rate-limited")];
                return;
            }
            message_routing_id_ = routing_id;
        }
    }
    auto env = wire::decode(payload.to_string_view());
    if (auto* outputs = env ? std::get_if<wire::Outputs>(&env->message) : nullptr) {
        message_items_ = std::max<size_t>(1, outputs->items.size());
    }
    if (!env) {
        if (RankSocket::first_warning(routing_id)) {
            log::warning("refusing a message from {}: {} ({})",
                         known == rank_of_connection_.end() ? RankSocket::describe_peer(payload)
                                                            : "rank " + std::to_string(known->second),
                         env.error().message, env.error().code);
        }
        if (known == rank_of_connection_.end()) refuse(routing_id, env.error().reason(), env.error().message);
        else send(routing_id, wire::ErrorReply{env.error().code, env.error().message});
        return;
    }
    if (wire::is_node_link(env->message)) {
        if (node_handler_) {
            node_handler_(routing_id, *env, RankSocket::frame_property(payload, "User-Id"),
                          RankSocket::frame_property(payload, "Peer-Address"));
        } else {
            refuse(routing_id, "unexpected-type", "this head takes no node links");
        }
        return;
    }
    if (auto* hello = std::get_if<wire::Hello>(&env->message)) {
        if (known != rank_of_connection_.end()) {
            // The rank sent its HELLO again before the CONFIG reached it: the CONFIG is on its way.
            const Slot& held = ranks_[known->second];
            if (hello->rank == held.info.rank && hello->incarnation == held.incarnation) return;
            send(routing_id,
                 wire::ErrorReply{ReasonCode("duplicate-hello"),
                                  "this connection already registered as rank " + std::to_string(known->second)});
            return;
        }
        on_hello(routing_id, *hello, RankSocket::frame_property(payload, "User-Id"));
        return;
    }
    if (known == rank_of_connection_.end()) {
        if (RankSocket::first_warning(routing_id)) {
            log::warning("refusing {} from {}: it has not sent HELLO (not-registered)", wire::type_name(env->message),
                         RankSocket::describe_peer(payload));
        }
        refuse(routing_id, "not-registered", "send HELLO first");
        return;
    }
    Slot& slot = ranks_[known->second];
    slot.last_heard = Clock::now();
    if (group_.on_group_message(slot.info, env->message)) return;
    if (auto* outputs = std::get_if<wire::Outputs>(&env->message)) {
        on_outputs(slot, *outputs);
    } else if (auto* hb = std::get_if<wire::Heartbeat>(&env->message)) {
        slot.info.running = hb->running;
        slot.info.waiting = hb->waiting;
        if (hb->progress != slot.progress) {
            slot.progress = hb->progress;
            slot.progress_at = slot.last_heard;
        }
        note_activity(slot, *hb);
        note_load(slot, *hb);
        // The answer tells the rank that the head is there (supervision.head_grace_period).
        send(routing_id, wire::Heartbeat{});
    } else if (auto* ready = std::get_if<wire::Ready>(&env->message)) {
        if (slot.info.state != RankState::initializing) return;
        if (std::exchange(slot.lost_before, false)) {
            count_event(slot, "rejoined");
            log::notice("rank {} (node '{}') is back after its loss [rejoined]", slot.info.rank, slot.info.node);
        }
        slot.progress_at = Clock::now();
        slot.info.device = ready->device;
        if (slot.drain_held) {  // an operator's drain outlives the process it was given to
            log::info("rank {} is ready on node {} ({}) and stays drained until 'dpctl undrain {}'", slot.info.rank,
                      slot.info.node, ready->device, slot.info.rank);
            set_state(slot, RankState::draining);
            return;
        }
        log::info("rank {} is ready on node {} ({}), {}/{} ranks ready", slot.info.rank, slot.info.node, ready->device,
                  ready_count_ + 1, ranks_.size());
        set_state(slot, RankState::ready);
    } else if (auto* err = std::get_if<wire::ErrorReply>(&env->message)) {
        if (slot.info.state == RankState::initializing) {
            // The rank's own word for it where the table has one: its codes become metrics labels.
            fail_rank(slot, "failed to initialise: " + err->message,
                      reason_from_code(err->code).value_or(Reason::init_failed));
        } else {
            log::warning("rank {} reports: {} ({})", slot.info.rank, err->message, err->code);
        }
    } else {
        send(routing_id,
             wire::ErrorReply{ReasonCode("unexpected-type"),
                              std::string("a rank may not send ") + wire::type_name(env->message)});
    }
}

// With CURVE the node is the name the ZAP handler gave the connection's key; without CURVE
// (ipc://, or insecure TCP) it is what HELLO says. A node may claim only ranks it holds: those
// of the block the head gave it (the head's own from the start, others' through the node
// link), or unowned ranks that its key's ranks= reserves. A node that holds nothing yet (its
// daemon has not registered) is told so with a code its ranks retry.
std::optional<Error> RankLink::ownership_problem(uint32_t rank, const std::string& node) const {
    const std::string r = std::to_string(rank);
    auto reserved = key_ranks(node);
    if (reserved && (rank < reserved->first || rank > reserved->second)) {
        return Error{"rank " + r + " is not among node '" + node + "' ranks " + std::to_string(reserved->first) + "-" +
                         std::to_string(reserved->second) + " (security.authorized_keys)",
                     "rank-not-owned"};
    }
    const std::string& owner = ranks_[rank].owner;
    if (!owner.empty()) {
        if (owner == node) return std::nullopt;
        return Error{"rank " + r + " belongs to node '" + owner + "', not '" + node + "'", "rank-not-owned"};
    }
    if (reserved) return std::nullopt;
    if (holds_ranks(node))
        return Error{"rank " + r + " is not among the ranks node '" + node + "' holds", "rank-not-owned"};
    return Error{"node '" + node +
                     "' holds no ranks yet: its daemon has not registered with the head, and its line in "
                     "security.authorized_keys reserves none (ranks=FIRST-LAST)",
                 "node-not-registered"};
}

bool RankLink::holds_ranks(const std::string& node) const {
    auto owned = owned_count_.find(node);
    return (owned != owned_count_.end() && owned->second > 0) || key_ranks(node).has_value();
}

std::string RankLink::describe_node(const std::string& node) const {
    std::string text = "node '" + node + "'";
    if (auto key = socket_.key_of(node)) text += " (key " + keys::fingerprint(key->public_z85) + ")";
    return text;
}

void RankLink::on_hello(const std::string& routing_id, const wire::Hello& hello, const std::string& key_node) {
    const std::string node = key_node.empty() ? hello.node : key_node;
    const std::string who = describe_node(node);
    auto refuse_logged = [&](ReasonCode code, const std::string& message) {
        log::warning("refused rank {} from {}: {} ({})", hello.rank, who, message, code.str());
        refuse(routing_id, code, message);
    };
    if (hello.rank >= config_.dp_size()) {
        return refuse_logged("rank-out-of-range",
                             "rank " + std::to_string(hello.rank) + " is out of range: data_parallel.size is " +
                                 std::to_string(config_.dp_size()));
    }
    if (hello.dp_size != 0 && hello.dp_size != config_.dp_size()) {
        return refuse_logged("config-mismatch",
                             "data_parallel.size: this node says " + std::to_string(hello.dp_size) + ", the head has " +
                                 std::to_string(config_.dp_size()));
    }
    if (!hello.model.empty() && hello.model != config_.engine.model) {
        return refuse_logged(
            "config-mismatch",
            "engine.model: this node says '" + hello.model + "', the head has '" + config_.engine.model + "'");
    }
    if (auto problem = ownership_problem(hello.rank, node)) {
        // Expected while a node starts (its ranks may come before its registration): noted once
        // per connection, and retried by the rank.
        if (problem->code == "node-not-registered") {
            if (RankSocket::first_warning(routing_id)) {
                log::notice("refused rank {} from {} for now: {} ({})", hello.rank, who, problem->message,
                            problem->code);
            }
            return refuse(routing_id, problem->reason(), problem->message);
        }
        return refuse_logged(problem->reason(), problem->message);
    }
    Slot& slot = ranks_[hello.rank];
    if (!slot.routing_id.empty()) {
        // The same process on a new connection (it reconnected) takes over at once. Another
        // process claiming a rank whose holder still sends heartbeats is refused; the holder
        // keeps serving. (A restarted process retries until its dead predecessor times out.)
        bool same_process = slot.info.node == node && slot.incarnation == hello.incarnation;
        bool holder_alive = Clock::now() - slot.last_heard < seconds(config_.handshake.heartbeat_timeout);
        if (!same_process && holder_alive) {
            return refuse_logged(
                "duplicate-rank",
                "rank " + std::to_string(hello.rank) + " is already served by node '" + slot.info.node + "'");
        }
        log::notice("rank {} registered again by {} (incarnation {:x} replaces {:x})", hello.rank, who,
                    hello.incarnation, slot.incarnation);
        refuse(slot.routing_id, "replaced", "a newer registration of this rank replaced this connection");
        fail_rank(slot, "was replaced by a new registration", "rank-replaced");
    }
    slot.routing_id = routing_id;
    slot.incarnation = hello.incarnation;
    slot.pid = hello.pid;
    slot.step_rate.reset();  // a new registration: its counters may start again
    slot.info.health_failures = 0;
    set_owner(hello.rank, node);
    slot.info.node = node;
    slot.info.last_error.clear();
    slot.last_heard = Clock::now();
    rank_of_connection_[routing_id] = hello.rank;
    slot.deadline = Clock::now() + seconds(config_.handshake.init_timeout);
    set_state(slot, RankState::initializing);

    wire::Config reply;
    reply.dp_size = config_.dp_size();
    reply.rank = hello.rank;
    reply.epoch = epoch_;
    reply.heartbeat_interval = config_.handshake.heartbeat_interval;
    reply.engine.backend = config_.engine.backend;
    reply.engine.model = config_.engine.model;
    reply.engine.max_batch = config_.engine.max_batch;
    reply.engine.step_time_ms = config_.engine.step_time_ms;
    reply.engine.max_model_len = config_.engine.max_model_len;
    reply.engine.default_max_tokens = config_.engine.default_max_tokens;
    group_.fill_group_config(reply);
    reply.engine.command = config_.engine.command;
    reply.engine.env.assign(config_.engine.env.begin(), config_.engine.env.end());
    reply.engine.health_path = config_.engine.health_path;
    reply.engine.ready_timeout = config_.engine.ready_timeout;
    reply.engine.max_concurrency = config_.engine.max_concurrency;
    reply.engine.health_interval = config_.engine.health_interval;
    reply.engine.health_failures = config_.engine.health_failures;
    fill_gpu_config(reply.engine);
    send(routing_id, reply);
    log::info("rank {} joined from {} (build {}), initializing", hello.rank, who, hello.build);
}

void RankLink::on_outputs(Slot& slot, const wire::Outputs& outputs) {
    slot.progress_at = slot.last_heard;  // a step's outputs are progress
    slot.info.running = outputs.running;
    slot.info.waiting = outputs.waiting;
    for (const auto& piece : outputs.items) {
        auto it = requests_.find(piece.id);
        // Unknown ids are requests aborted while their output was on the way: nothing to do.
        if (it == requests_.end() || it->second.rank != slot.info.rank) continue;
        it->second.retry.responded = true;
        slot.info.tokens += piece.tokens;
        if (auto problem = output_problem(it->second, piece); !problem.empty()) {
            fail_request_of_misbehaving_rank(slot, piece.id, problem);
            continue;
        }
        RequestSink* sink = it->second.sink;
        if (piece.done) {
            requests_.erase(it);
            request_left(slot);
            ++slot.info.served;
        }
        sink->on_output(piece);
    }
}

std::string RankLink::output_problem(InFlight& request, const wire::Output& piece) const {
    request.tokens += piece.tokens;
    request.bytes += piece.data.size() + piece.content_type.size();
    if (request.token_limit && request.tokens > *request.token_limit) {
        return fmt::format("sent {} completion tokens for a request that allows {} (its max_tokens times its choices)",
                           request.tokens, *request.token_limit);
    }
    if (request.bytes > config_.frontend.max_response_bytes) {
        return fmt::format("sent more than {} bytes of response for one request (frontend.max_response_bytes)",
                           config_.frontend.max_response_bytes);
    }
    return {};
}

void RankLink::fail_request_of_misbehaving_rank(Slot& slot, uint64_t id, const std::string& problem) {
    auto it = requests_.find(id);
    RequestSink* sink = it->second.sink;
    requests_.erase(it);
    request_left(slot);
    count_event(slot, "rank-misbehaved");
    send(slot.routing_id, wire::Abort{{id}});
    if (auto others = log_throttle_.admit("rank-misbehaved " + std::to_string(slot.info.rank))) {
        log::warning(
            "rank {} (node '{}') {}: the request failed and was aborted on the rank "
            "(rank-misbehaved){}",
            slot.info.rank, slot.info.node, problem, LogThrottle::suppressed_note(*others));
    }
    sink->on_failure(Error{"rank " + std::to_string(slot.info.rank) + " " + problem, "rank-misbehaved"});
}

void RankLink::note_load(Slot& slot, const wire::Heartbeat& heartbeat) {
    slot.info.engine_queued = heartbeat.engine_queued;
    slot.info.kv_cache_usage = heartbeat.kv_cache_usage;
    uint32_t before = std::exchange(slot.info.health_failures, heartbeat.health_failures);
    if ((before == 0) == (heartbeat.health_failures == 0)) return;
    if (heartbeat.health_failures > 0 && slot.info.state == RankState::ready) {
        log::warning(
            "rank {} (node '{}'): its engine's server failed a health check; no new requests until it "
            "answers again (engine.health_path) [engine-unhealthy]",
            slot.info.rank, slot.info.node);
        count_event(slot, "engine-unhealthy");
        set_state(slot, RankState::unhealthy);
    } else if (heartbeat.health_failures == 0 && slot.info.state == RankState::unhealthy) {
        log::notice("rank {} (node '{}'): its engine's server answers health checks again [engine-healthy]",
                    slot.info.rank, slot.info.node);
        set_state(slot, RankState::ready);
    }
}

RankLink::Slot* RankLink::pick_rank(std::optional<uint32_t> except) {
    candidates_.resize(ranks_.size());
    for (size_t i = 0; i < ranks_.size(); ++i) {
        const RankInfo& info = ranks_[i].info;
        candidates_[i] = {info.rank, info.state == RankState::ready, info.in_flight, info.engine_queued,
                          info.kv_cache_usage};
    }
    auto rank = load_policy_.pick(candidates_, except);
    return rank ? &ranks_[*rank] : nullptr;
}

// ZeroMQ dropped the connection (the peer closed it: its process died, or it reconnected).
// The rank behind it is lost now rather than after heartbeat_timeout. Handled after the
// current send returns: send() is called from inside loops over the registry. Right after a
// stall of this daemon, a dropped connection is the stall's doing (the rank's ZeroMQ gave up
// on a silent head and reconnected): the rank registers again by itself, and is not killed.
void RankLink::connection_gone(const std::string& routing_id) {
    auto known = rank_of_connection_.find(routing_id);
    if (known == rank_of_connection_.end()) return;
    asio::post(io_, [this, routing_id, rank = known->second] {
        Slot& slot = ranks_[rank];
        if (slot.routing_id != routing_id || shutting_down_) return;
        bool after_own_stall = Clock::now() < stall_recovery_until_;
        fail_rank(slot,
                  after_own_stall ? "lost its connection to the head while the head was stalled"
                                  : "lost its connection to the head",
                  "connection-lost");
        if (!after_own_stall && events_.deadline_missed) events_.deadline_missed(rank);
    });
}

Result<uint64_t> RankLink::submit(wire::Request request, RequestSink* sink, std::optional<uint64_t> token_limit) {
    if (ready_count_ > 0 && !has_quorum()) {
        return Error{std::to_string(ready_count_) + " of " + std::to_string(ranks_.size()) +
                         " ranks are ready, fewer than data_parallel.min_ranks (" +
                         std::to_string(config_.data_parallel.min_ranks) + "); see /health for the missing ones",
                     "below-min-ranks"};
    }
    Slot* best = pick_rank();
    if (!best) return Error{"no engine rank is ready to serve requests; see the daemon's log", "no-ready-rank"};
    request.id = next_id_++;
    if (lockstep()) group_.wake_group();
    // A rank whose connection just went (not yet declared lost) does not fail the request
    // while another rank can take it.
    for (uint32_t tries = 1; !send(best->routing_id, request); ++tries) {
        Slot* other = tries < ranks_.size() ? pick_rank(best->info.rank) : nullptr;
        if (!other) {
            return Error{"rank " + std::to_string(best->info.rank) +
                             " could not take the request (its queue is full or it went away)",
                         "rank-unreachable"};
        }
        best = other;
    }
    uint64_t id = request.id;
    requests_.emplace(id, InFlight{best->info.rank, sink, {}, std::move(request), token_limit});
    ++best->info.in_flight;
    return id;
}

void RankLink::request_left(Slot& slot) {
    if (--slot.info.in_flight == 0 && events_.rank_idle) events_.rank_idle(slot.info.rank);
}

void RankLink::abort(uint64_t id) {
    auto it = requests_.find(id);
    if (it == requests_.end()) return;
    Slot& slot = ranks_[it->second.rank];
    request_left(slot);
    requests_.erase(it);
    if (!slot.routing_id.empty()) send(slot.routing_id, wire::Abort{{id}});
}

void RankLink::set_state(Slot& slot, RankState state) {
    bool was_ready = slot.info.state == RankState::ready;
    bool changed = slot.info.state != state;
    slot.info.state = state;
    if (state == RankState::stopped || state == RankState::failed || state == RankState::connecting) {
        // No process (or not yet a registered one): no rate, no memory until it reports again.
        slot.step_rate.reset();
        slot.info.steps_per_second = slot.info.dummy_step_share = 0;
        slot.info.memory_used = 0;
    }
    bool is_ready = state == RankState::ready;
    if (was_ready != is_ready) ready_count_ += is_ready ? 1 : -1;
    // Listeners see the new count with the new state.
    if (changed && events_.rank_changed) events_.rank_changed(slot.info.rank);
    if (was_ready != is_ready && events_.ready_count_changed) events_.ready_count_changed();
    if (changed && lockstep() && !shutting_down_) group_.schedule_regroup(false, std::chrono::milliseconds(50));
}

void RankLink::fail_rank(Slot& slot, const std::string& reason, ReasonCode code) {
    log::error("rank {} (node '{}') {} [{}]", slot.info.rank, slot.info.node.empty() ? "-" : slot.info.node, reason,
               code.str());
    slot.info.last_error = reason;
    slot.info.reason = code;
    count_event(slot, code);
    slot.lost_before = true;
    if (!slot.routing_id.empty()) rank_of_connection_.erase(slot.routing_id);
    slot.routing_id.clear();
    set_state(slot, RankState::failed);
    // Requests that produced nothing yet move to another rank, once; the client never knows.
    // The others end now, with the reason, rather than waiting forever: output already sent
    // cannot be taken back, and sending it twice would be worse.
    Error error{"rank " + std::to_string(slot.info.rank) + " " + reason + " while serving this request", "rank-lost"};
    std::vector<uint64_t> lost;
    for (const auto& [id, request] : requests_) {
        if (request.rank == slot.info.rank) lost.push_back(id);
    }
    size_t moved = 0;
    for (uint64_t id : lost) {
        auto it = requests_.find(id);
        if (it == requests_.end()) continue;  // ended meanwhile: a sibling choice's failure aborted it
        InFlight& request = it->second;
        request_left(slot);
        if (request.retry.may_retry()) {
            if (Slot* other = pick_rank(slot.info.rank); other && send(other->routing_id, request.request)) {
                request.rank = other->info.rank;
                request.retry.retried = true;
                ++other->info.in_flight;
                ++moved;
                continue;
            }
        }
        RequestSink* sink = request.sink;
        requests_.erase(it);
        sink->on_failure(error);
    }
    if (moved) log::info("moved {} request(s) that had not started from rank {} to other ranks", moved, slot.info.rank);
}

Status RankLink::drain(uint32_t rank, bool until_undrain) {
    Slot& slot = ranks_.at(rank);
    if (slot.info.state == RankState::draining) {
        slot.drain_held = slot.drain_held || until_undrain;
        return Ok{};
    }
    if (slot.info.state != RankState::ready && slot.info.state != RankState::unhealthy) {
        return Error{"rank " + std::to_string(rank) + " is " + to_string(slot.info.state) +
                         ", not ready; only a ready rank can drain",
                     "bad-state"};
    }
    slot.drain_held = until_undrain;
    set_state(slot, RankState::draining);
    log::info("rank {} draining: {} request(s) in flight, no new ones", rank, slot.info.in_flight);
    return Ok{};
}

Status RankLink::undrain(uint32_t rank) {
    Slot& slot = ranks_.at(rank);
    bool was_held = std::exchange(slot.drain_held, false);
    if (slot.info.state == RankState::ready) return Ok{};
    if (slot.info.state != RankState::draining) {
        if (was_held) {  // drained, and between processes now: the next one serves
            log::info("rank {} is no longer drained; it takes requests once it is ready", rank);
            return Ok{};
        }
        return Error{"rank " + std::to_string(rank) + " is " + to_string(slot.info.state) + ", not draining",
                     "bad-state"};
    }
    set_state(slot, slot.info.health_failures ? RankState::unhealthy : RankState::ready);
    log::info("rank {} accepts requests again", rank);
    return Ok{};
}

void RankLink::stop(uint32_t rank, const StopCause& cause) {
    Slot& slot = ranks_.at(rank);
    if (!slot.routing_id.empty()) {
        send(slot.routing_id, wire::Shutdown{});
        rank_of_connection_.erase(slot.routing_id);
        slot.routing_id.clear();
    }
    // Anything still in flight (the drain deadline passed) ends with the reason.
    if (slot.info.in_flight > 0) fail_rank(slot, cause.reason, cause.code);
    slot.info.in_flight = 0;
    set_state(slot, RankState::stopped);
}

void RankLink::rank_spawned(uint32_t rank) {
    if (rank >= ranks_.size()) return;
    Slot& slot = ranks_[rank];
    if (std::exchange(slot.spawned_before, true)) count_event(slot, "restarted");
    // Another process holds the rank: it keeps serving (the new one is refused as a duplicate
    // until that one goes), so the rank is not "connecting" again.
    if (!slot.routing_id.empty()) return;
    slot.info.last_error.clear();
    slot.info.reason.clear();
    slot.deadline = Clock::now() + seconds(config_.handshake.connect_timeout);
    set_state(slot, RankState::connecting);
}

void RankLink::rank_exited(uint32_t rank, uint32_t pid, const std::string& cause) {
    if (rank >= ranks_.size()) return;
    Slot& slot = ranks_[rank];
    if (slot.info.state == RankState::stopped) return;
    if (!slot.routing_id.empty() && (slot.info.node != config_.node.name || slot.pid != pid)) {
        // Another process registered the rank (one this supervisor did not start, or one on
        // another node): the exit of this one, which never held it, takes nothing from it.
        log::info("rank {} process {} {}; the rank stays with the process that registered it (node '{}', pid {})", rank,
                  pid, cause, slot.info.node, slot.pid);
        return;
    }
    if (slot.info.state == RankState::failed) {  // already failed (deadline, init); this is the aftermath
        log::info("rank {} {}", rank, cause);
        return;
    }
    fail_rank(slot, cause, "rank-exited");
}

void RankLink::rank_failed(uint32_t rank, const std::string& reason, ReasonCode code) {
    if (rank >= ranks_.size()) return;
    Slot& slot = ranks_[rank];
    slot.info.last_error = reason;
    slot.info.reason = code;
    count_event(slot, code);
    set_state(slot, RankState::failed);
    if (events_.rank_changed) events_.rank_changed(rank);
}

void RankLink::note_activity(Slot& slot, const wire::Heartbeat& heartbeat) {
    slot.step_rate.add(slot.last_heard, heartbeat.progress, heartbeat.dummy_steps);
    slot.info.steps_per_second = slot.step_rate.steps_per_second();
    slot.info.dummy_step_share = slot.step_rate.dummy_share();
    slot.info.wave = heartbeat.wave;
    slot.info.memory_used = heartbeat.memory_used;
}

bool RankLink::is_hung(Slot& slot, Clock::time_point now) {
    // Work is what the head has in flight there. The rank's running/waiting figures are not:
    // they come from the rank, may lag an abort by a heartbeat, and a rank that nobody waits on
    // harms no one even if its engine is stuck (a request routed to it starts the clock).
    bool has_work = slot.info.in_flight > 0;
    bool serving = slot.info.state == RankState::ready || slot.info.state == RankState::unhealthy ||
        slot.info.state == RankState::draining;
    // The clock runs only while there is work: an idle rank takes no steps.
    if (!has_work || !serving) {
        slot.progress_at = now;
        return false;
    }
    return now - slot.progress_at > seconds(config_.handshake.hang_timeout);
}

std::vector<std::string> RankLink::missing_ranks() const {
    std::vector<std::string> out;
    for (const auto& s : ranks_) {
        if (s.info.state == RankState::ready) continue;
        std::string text = "rank " + std::to_string(s.info.rank) + " (" + to_string(s.info.state);
        if (!s.info.node.empty()) text += ", node '" + s.info.node + "'";
        if (!s.info.reason.empty()) text += ", " + s.info.reason;
        out.push_back(text + ")");
    }
    return out;
}

void RankLink::check_deadlines() {
    // Whatever the ranks sent is read before any of them is judged silent.
    socket_.read_queued();
    auto now = Clock::now();
    excuse_own_stall(now);
    const auto silence_limit = seconds(config_.handshake.heartbeat_timeout);
    for (Slot& slot : ranks_) {
        auto state = slot.info.state;
        if (!slot.routing_id.empty() && now - slot.last_heard > silence_limit) {
            fail_rank(slot,
                      "went silent: no heartbeat for " + std::to_string(config_.handshake.heartbeat_timeout) +
                          " s (handshake.heartbeat_timeout)",
                      "heartbeat-timeout");
            if (events_.deadline_missed) events_.deadline_missed(slot.info.rank);
            continue;
        }
        if (!slot.routing_id.empty() && is_hung(slot, now)) {
            fail_rank(slot,
                      fmt::format("is hung: it sends heartbeats but took no step for {} s while it had work "
                                  "(handshake.hang_timeout)",
                                  config_.handshake.hang_timeout),
                      "hung");
            if (events_.deadline_missed) events_.deadline_missed(slot.info.rank);
            continue;
        }
        if ((state != RankState::connecting && state != RankState::initializing) || now < slot.deadline) continue;
        bool connecting = state == RankState::connecting;
        double limit = connecting ? config_.handshake.connect_timeout : config_.handshake.init_timeout;
        std::string reason = connecting ? "did not send HELLO within " + std::to_string(static_cast<int>(limit)) +
                " s (phase connecting; handshake.connect_timeout)"
                                        : "did not send READY within " + std::to_string(static_cast<int>(limit)) +
                " s (phase initializing; handshake.init_timeout)";
        fail_rank(slot, reason, "handshake-timeout");
        if (events_.deadline_missed) events_.deadline_missed(slot.info.rank);
    }
    deadline_timer_.expires_after(std::chrono::milliseconds(100));
    loop_stall_.due_at(deadline_timer_.expiry());
    deadline_timer_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) check_deadlines();
    });
}

// The head itself did not run for a while (its own loop is late by more than a heartbeat
// interval): the ranks' heartbeats of that time wait unread, and the ranks are not to blame.
// Their clocks move forward by the stall.
void RankLink::excuse_own_stall(Clock::time_point now) {
    auto stall = loop_stall_.stalled_for(now, seconds(config_.handshake.heartbeat_interval));
    if (stall == Clock::duration::zero()) return;
    log::notice(
        "this daemon did not run for {:.1f} s (it or its machine was stalled); that time does not count "
        "against the ranks' heartbeats or handshake deadlines [head-stalled]",
        std::chrono::duration<double>(stall).count());
    stall_recovery_until_ = now + seconds(config_.handshake.heartbeat_timeout);
    for (Slot& slot : ranks_) {
        slot.last_heard = LoopStall::excused(slot.last_heard, stall, now);
        slot.progress_at = LoopStall::excused(slot.progress_at, stall, now);
        slot.deadline += stall;
    }
}

void RankLink::shutdown() {
    shutting_down_ = true;
    deadline_timer_.cancel();
    group_.shutdown();
    std::vector<std::pair<uint64_t, InFlight>> pending(requests_.begin(), requests_.end());
    requests_.clear();
    Error error{"the server is shutting down", "shutdown"};
    for (const auto& [id, request] : pending) request.sink->on_failure(error);
    const uint32_t first_local = config_.first_local_rank(), end_local = first_local + config_.size_local();
    for (Slot& slot : ranks_) {
        // Only this node's ranks stop with it. Ranks of headless nodes wait for the head to
        // come back and register again.
        bool local = slot.info.rank >= first_local && slot.info.rank < end_local &&
            (slot.owner.empty() || slot.owner == config_.node.name);  // not moved to another node
        if (local && !slot.routing_id.empty()) send(slot.routing_id, wire::Shutdown{});
        slot.info.in_flight = 0;
        slot.routing_id.clear();
        set_state(slot, RankState::stopped);
    }
    rank_of_connection_.clear();
}

std::map<std::string, uint64_t> RankLink::refusals() const {
    auto out = refusals_;
    socket_.add_refusals(out);
    return out;
}

void RankLink::set_owner(uint32_t rank, const std::string& node) {
    if (rank >= ranks_.size()) return;
    std::string& owner = ranks_[rank].owner;
    if (owner == node) return;
    if (!owner.empty()) {
        auto count = owned_count_.find(owner);
        if (count != owned_count_.end() && --count->second == 0) owned_count_.erase(count);
    }
    owner = node;
    if (!node.empty()) ++owned_count_[node];
}

std::optional<std::pair<uint32_t, uint32_t>> RankLink::key_ranks(const std::string& node) const {
    auto key = socket_.key_of(node);
    if (!key) return std::nullopt;
    return key->ranks;
}

std::vector<RankInfo> RankLink::ranks() const {
    std::vector<RankInfo> out;
    out.reserve(ranks_.size());
    for (uint32_t rank = 0; rank < ranks_.size(); ++rank) out.push_back(*rank_info(rank));
    return out;
}

std::optional<RankInfo> RankLink::rank_info(uint32_t rank) const {
    if (rank >= ranks_.size()) return std::nullopt;
    RankInfo info = ranks_[rank].info;
    info.activity_known = true;
    return info;
}

}  // namespace dpengine
