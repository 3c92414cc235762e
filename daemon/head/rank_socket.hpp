// The head's ROUTER socket that every rank and node connects to: CURVE with the ZAP handler
// that admits only authorized keys, the handshake monitor that counts failed ZMTP handshakes,
// the registration deadline that closes connections which never register, and the
// edge-triggered drain of ZeroMQ's notification fd on the daemon's event loop. It moves
// bytes; what they mean is RankLink's business.
#pragma once

#include "core/config.hpp"
#include "core/error.hpp"
#include "head/handshake_monitor.hpp"
#include "core/log_throttle.hpp"
#include "head/registration_deadline.hpp"
#include "head/zap_handler.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <zmq.hpp>

namespace dpengine {

class RankSocket {
public:
    struct Handlers {
        // One well-formed message (routing id + one payload frame). Returns the work it took,
        // in items (an OUTPUTS message's pieces; 1 for other messages): each wake-up of the
        // event loop handles a bounded amount of work before HTTP and timers get their turn.
        std::function<size_t(const std::string& routing_id, zmq::message_t& payload)> message;
        // Sending to the connection failed because it is gone (EHOSTUNREACH).
        std::function<void(const std::string& routing_id)> connection_gone;
    };

    RankSocket(boost::asio::io_context& io, const Config& config, Handlers handlers);
    ~RankSocket();

    Status bind(const std::string& endpoint);
    const std::string& endpoint() const { return endpoint_; }

    // Hands every message already queued to the handler now (a liveness check reads what
    // arrived before it judges silence).
    void read_queued() { drain(); }

    // False when the connection is gone or its queue is full.
    bool send(const std::string& routing_id, std::string_view bytes);
    // The connection of the message being handled registered (the head sent it its
    // configuration): the registration deadline no longer applies to it.
    void registered(const std::string& routing_id);

    // Re-reads security.authorized_keys (config reload). Fails, changing nothing, on a bad file.
    Status reload_authorized_keys();
    // The authorized key of NODE, when CURVE is on and the file names it.
    std::optional<keys::AuthorizedKey> key_of(const std::string& node) const;
    // Every authorized key (none without CURVE).
    std::vector<keys::AuthorizedKey> authorized_keys() const;
    // Failed handshakes and refused keys by reason code.
    void add_refusals(std::map<std::string, uint64_t>& out) const;

    // A connection property ZeroMQ attaches to every received frame ("Peer-Address", and
    // "User-Id": the node name our ZAP handler gave the connection's key); empty when absent.
    static std::string frame_property(zmq::message_t& frame, const char* name);
    // Who sent a message the head will not take, for the log: the key's node when CURVE names
    // one, and the address.
    static std::string describe_peer(zmq::message_t& frame);
    // True the first time PEER (a routing id) is warned about: a misbehaving peer is logged
    // once rather than once per message.
    static bool first_warning(const std::string& peer);

private:
    Status start_security();
    Result<std::vector<keys::AuthorizedKey>> allow_list() const;
    void arm();
    void drain();
    void schedule_drain();
    void enforce_registration_deadline();

    boost::asio::io_context& io_;
    const Config& config_;
    Handlers handlers_;
    zmq::context_t context_;
    std::unique_ptr<ZapHandler> zap_;  // before router_: it must outlive the socket it vets
    zmq::socket_t router_;
    boost::asio::posix::stream_descriptor watcher_;
    std::string endpoint_;
    bool drain_scheduled_ = false;
    bool armed_ = false;
    // The message being handled: its connection, for registered().
    const std::string* message_routing_id_ = nullptr;
    int message_fd_ = -1;
    RegistrationDeadline registration_;
    boost::asio::steady_timer registration_timer_;
    uint64_t registration_timeouts_ = 0;
    LogThrottle log_throttle_;
    // Declared after router_ so that it closes first.
    std::unique_ptr<HandshakeMonitor> handshake_monitor_;
};

}  // namespace dpengine
