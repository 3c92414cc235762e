#include "rank_socket.hpp"

#include "core/log.hpp"
#include "core/transport.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>
#include <unordered_set>

namespace dpengine {

namespace asio = boost::asio;

namespace {

// Work handled per wake-up before the loop yields to HTTP work: messages, and the items in
// them (an OUTPUTS message may carry a million), so a flood of large messages cannot hold
// the loop for more than about one message's decoding.
constexpr int drain_budget = 512;
constexpr size_t drain_item_budget = 8192;

// How often connections are checked against handshake.register_timeout.
constexpr std::chrono::milliseconds registration_check_interval{500};

// Remembers which peers were already warned about, so a misbehaving peer is logged once
// rather than once per message; bounded so a flood of peers cannot grow it.
class WarnedPeers {
public:
    bool first_time(const std::string& id) {
        if (seen_.size() > 4096) seen_.clear();
        return seen_.insert(id).second;
    }

private:
    std::unordered_set<std::string> seen_;
};

WarnedPeers warned_peers;

}  // namespace

bool RankSocket::first_warning(const std::string& peer) { return warned_peers.first_time(peer); }

std::string RankSocket::frame_property(zmq::message_t& frame, const char* name) {
    const char* value = zmq_msg_gets(frame.handle(), name);
    return value ? value : "";
}

std::string RankSocket::describe_peer(zmq::message_t& frame) {
    std::string address = frame_property(frame, "Peer-Address");
    std::string node = frame_property(frame, "User-Id");
    std::string text = node.empty() ? "an unregistered peer" : "node '" + node + "'";
    return address.empty() ? text : text + " at " + address;
}

RankSocket::RankSocket(asio::io_context& io, const Config& config, Handlers handlers)
    : io_(io),
      config_(config),
      handlers_(std::move(handlers)),
      context_(1),
      router_(context_, zmq::socket_type::router),
      watcher_(io),
      registration_timer_(io) {
    // The receive queue keeps transport's 100000 messages: with a small one, a connection that
    // filled it while this process was stopped and then failed makes libzmq 4.3.4 abort
    // (stream_engine_base.cpp: !_io_error) when the head reads on; test_fault_head_frozen_hint.
    transport::configure(router_, config.daemon.max_message_bytes);
    // Sending to a connection that is gone is an error we see, not a silent drop.
    router_.set(zmq::sockopt::router_mandatory, 1);
}

RankSocket::~RankSocket() {
    watcher_.release();  // the fd belongs to the ZeroMQ socket
}

// The authorized keys plus the head's own, which its local ranks use.
Result<std::vector<keys::AuthorizedKey>> RankSocket::allow_list() const {
    auto secret = keys::load_secret(config_.security.key);
    if (!secret) return Error{"security.key: " + secret.error().message};
    auto authorized = keys::load_authorized_keys(config_.security.authorized_keys, config_.node.name);
    if (!authorized) return Error{"security.authorized_keys: " + authorized.error().message};
    // No rank range on the head's own key: the head runs its configured block and whatever
    // 'dpctl assign' moves to it, and rank ownership (RankLink::ownership_problem) holds it to that.
    authorized->push_back(keys::AuthorizedKey{secret->public_z85, config_.node.name, std::nullopt});
    return authorized;
}

Status RankSocket::reload_authorized_keys() {
    if (!zap_) return Ok{};
    auto authorized = allow_list();
    if (!authorized) return authorized.error();
    log::info("reloaded {} authorized key(s) from {}", authorized->size() - 1, config_.security.authorized_keys);
    zap_->replace(std::move(authorized).value());
    return Ok{};
}

// CURVE on the TCP socket: the head's secret key, and a ZAP handler that admits only the
// authorized keys (plus the head's own, which its local ranks use).
Status RankSocket::start_security() {
    if (!config_.has_remote_ranks()) return Ok{};
    if (!config_.uses_curve()) {
        log::warning(
            "security.insecure is set: ranks connect over plaintext TCP, unauthenticated; anyone who can "
            "reach {} port {} can join and read traffic",
            config_.data_parallel.address, config_.data_parallel.rpc_port);
        return Ok{};
    }
    auto secret = keys::load_secret(config_.security.key);
    if (!secret) return Error{"security.key: " + secret.error().message};
    auto authorized = allow_list();
    if (!authorized) return authorized.error();
    log::info("CURVE enabled: {} authorized key(s) from {}; this head's key is {}", authorized->size() - 1,
              config_.security.authorized_keys, keys::fingerprint(secret->public_z85));
    zap_ = std::make_unique<ZapHandler>(context_, std::move(authorized).value());
    router_.set(zmq::sockopt::zap_domain, "dpengine");
    router_.set(zmq::sockopt::curve_server, 1);
    router_.set(zmq::sockopt::curve_secretkey, secret->secret_z85);
    return Ok{};
}

Status RankSocket::bind(const std::string& endpoint) {
    if (auto secured = start_security(); !secured) return secured;
    try {
        // Before bind(): no connection may escape the count of failed handshakes, nor the
        // registration deadline.
        HandshakeMonitor::ConnectionEvents connections{
            [this](int fd) { registration_.accepted(fd, RegistrationDeadline::Clock::now()); },
            [this](int fd) { registration_.closed(fd); }};
        handshake_monitor_ = std::make_unique<HandshakeMonitor>(io_, context_, router_, "dpengine-rank-link-monitor",
                                                                std::move(connections));
        router_.bind(endpoint);
    } catch (const zmq::error_t& e) {
        return Error{"cannot bind the rank endpoint " + endpoint + ": " + e.what()};
    }
    endpoint_ = endpoint;
    watcher_.assign(router_.get(zmq::sockopt::fd));
    arm();
    enforce_registration_deadline();
    return Ok{};
}

void RankSocket::registered(const std::string& routing_id) {
    if (message_routing_id_ && *message_routing_id_ == routing_id && message_fd_ >= 0) {
        // The monitor reports a connection's acceptance on its own socket, which is read on
        // its own wake-ups: a connection's first messages can be handled before that report.
        // libzmq's one I/O thread writes the report before the connection's handshake starts,
        // so reading what the monitor holds now takes it in; otherwise the late report would
        // start a deadline for a connection that has registered already, and close it.
        handshake_monitor_->drain();
        registration_.registered(message_fd_);
    }
}

void RankSocket::enforce_registration_deadline() {
    // The monitor's waiting events first: a connection that just closed must not be taken
    // for one still waiting.
    handshake_monitor_->drain();
    auto closed = registration_.expire(RegistrationDeadline::Clock::now(),
                                       std::chrono::duration_cast<RegistrationDeadline::Clock::duration>(
                                           std::chrono::duration<double>(config_.handshake.register_timeout)));
    registration_timeouts_ += closed.size();
    if (!closed.empty()) {
        if (auto others = log_throttle_.admit("registration-timeout", LogThrottle::Clock::now(), closed.size())) {
            log::warning(
                "closed a connection from {} on {}: it did not register (an accepted HELLO or NODE_HELLO) "
                "within {} s (handshake.register_timeout) (registration-timeout){}",
                closed.front(), endpoint_, config_.handshake.register_timeout, LogThrottle::suppressed_note(*others));
        }
    }
    registration_timer_.expires_after(registration_check_interval);
    registration_timer_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) enforce_registration_deadline();
    });
}

// ZeroMQ's fd is edge-triggered: it only signals that ZMQ_EVENTS may have changed. So the
// socket is drained until ZMQ_EVENTS says nothing is left, and re-checked after every send.
void RankSocket::arm() {
    // One wait at a time: drain() runs after every send too, and each extra pending wait would
    // cost a ZMQ_EVENTS check (system calls) on every wake-up.
    if (armed_) return;
    armed_ = true;
    watcher_.async_wait(asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
        armed_ = false;
        if (!ec) drain();
    });
}

void RankSocket::schedule_drain() {
    if (drain_scheduled_) return;
    drain_scheduled_ = true;
    asio::post(io_, [this] {
        drain_scheduled_ = false;
        drain();
    });
}

void RankSocket::drain() {
    size_t items = 0;
    for (int i = 0; i < drain_budget && items < drain_item_budget; ++i) {
        if (!(router_.get(zmq::sockopt::events) & ZMQ_POLLIN)) {
            arm();
            return;
        }
        zmq::message_t id, payload;
        if (!router_.recv(id, zmq::recv_flags::dontwait)) continue;
        bool well_formed = id.more() && router_.recv(payload, zmq::recv_flags::dontwait) && !payload.more();
        if (!well_formed) {
            zmq::message_t rest;
            while ((payload.more() || id.more()) && router_.recv(rest, zmq::recv_flags::dontwait) && rest.more()) {
            }
            if (warned_peers.first_time(id.to_string())) {
                log::warning("dropping a message with an unexpected number of frames from {} (malformed)",
                             describe_peer(id));
            }
            continue;
        }
        const std::string routing_id = id.to_string();
        message_routing_id_ = &routing_id;
        message_fd_ = zmq_msg_get(payload.handle(), ZMQ_SRCFD);
        items += handlers_.message(routing_id, payload);
        message_routing_id_ = nullptr;
        message_fd_ = -1;
    }
    schedule_drain();  // more may be waiting: continue after other work had its turn
}

bool RankSocket::send(const std::string& routing_id, std::string_view bytes) {
    try {
        bool sent = router_.send(zmq::buffer(routing_id), zmq::send_flags::sndmore | zmq::send_flags::dontwait) &&
            router_.send(zmq::buffer(bytes.data(), bytes.size()), zmq::send_flags::dontwait);
        schedule_drain();
        return sent;
    } catch (const zmq::error_t& e) {
        schedule_drain();
        if (e.num() == EHOSTUNREACH) handlers_.connection_gone(routing_id);
        return false;  // EHOSTUNREACH: the connection is gone
    }
}

std::optional<keys::AuthorizedKey> RankSocket::key_of(const std::string& node) const {
    if (!zap_) return std::nullopt;
    return zap_->find_node(node);
}

std::vector<keys::AuthorizedKey> RankSocket::authorized_keys() const {
    if (!zap_) return {};
    return zap_->authorized();
}

void RankSocket::add_refusals(std::map<std::string, uint64_t>& out) const {
    if (handshake_monitor_) {
        for (const auto& [reason, count] : handshake_monitor_->failures()) out[reason] += count;
    }
    if (zap_ && zap_->refusals()) out[ReasonCode("unauthorized-key")] += zap_->refusals();
    if (registration_timeouts_) out[ReasonCode("registration-timeout")] += registration_timeouts_;
}

}  // namespace dpengine
