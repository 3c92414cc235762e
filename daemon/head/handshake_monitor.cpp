#include "handshake_monitor.hpp"

#include "core/log.hpp"

#include <cstring>

namespace dpengine {

namespace asio = boost::asio;

namespace {

std::string describe(uint16_t event, uint32_t value) {
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) {
        return std::string("the ZMTP handshake did not complete (") + std::strerror(static_cast<int>(value)) + ")";
    }
    switch (value) {
        case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "the peer uses another security mechanism (this socket needs CURVE, or plaintext with "
                   "security.insecure)";
        case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC: return "the peer's CURVE handshake failed (wrong head key?)";
        default: break;
    }
    char hex[16];
    std::snprintf(hex, sizeof hex, "%#x", value);
    return std::string("the peer broke the ZMTP protocol (libzmq error ") + hex + ")";
}

}  // namespace

std::optional<Reason> HandshakeMonitor::reason_code(uint16_t event, uint32_t value) {
    if (event == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) return Reason::handshake_incomplete;
    if (event != ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) return {};
    if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) return Reason::mechanism_mismatch;
    if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) return Reason::curve_handshake_failed;
    // ZAP protocol errors are between libzmq and our own handler: not the peer's doing.
    if (value >= ZMQ_PROTOCOL_ERROR_ZAP_UNSPECIFIED && value <= ZMQ_PROTOCOL_ERROR_ZAP_INVALID_METADATA) return {};
    return Reason::protocol_error;
}

HandshakeMonitor::HandshakeMonitor(asio::io_context& io, zmq::context_t& context, zmq::socket_t& watched,
                                   const std::string& name, ConnectionEvents connections)
    : pair_(context, zmq::socket_type::pair), watcher_(io), connections_(std::move(connections)) {
    const std::string endpoint = "inproc://" + name;
    if (zmq_socket_monitor(watched.handle(), endpoint.c_str(),
                           ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL |
                               ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) != 0) {
        throw zmq::error_t();
    }
    pair_.set(zmq::sockopt::linger, 0);
    pair_.connect(endpoint);
    watcher_.assign(pair_.get(zmq::sockopt::fd));
    drain();
}

HandshakeMonitor::~HandshakeMonitor() {
    watcher_.release();  // the fd belongs to the ZeroMQ socket
}

void HandshakeMonitor::arm() {
    if (armed_) return;
    armed_ = true;
    watcher_.async_wait(asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
        armed_ = false;
        if (!ec) drain();
    });
}

// Same edge-triggered discipline as the ROUTER: read until ZMQ_EVENTS says nothing is left.
void HandshakeMonitor::drain() {
    while (pair_.get(zmq::sockopt::events) & ZMQ_POLLIN) {
        zmq::message_t header, address;
        if (!pair_.recv(header, zmq::recv_flags::dontwait)) break;
        if (header.more()) (void)pair_.recv(address, zmq::recv_flags::dontwait);
        if (header.size() < 6) continue;
        uint16_t event;
        uint32_t value;
        std::memcpy(&event, header.data(), sizeof event);
        std::memcpy(&value, static_cast<const char*>(header.data()) + 2, sizeof value);
        // For these two the value is the connection's file descriptor.
        if (event == ZMQ_EVENT_ACCEPTED) {
            if (connections_.accepted) connections_.accepted(static_cast<int>(value));
            continue;
        }
        if (event == ZMQ_EVENT_DISCONNECTED) {
            if (connections_.closed) connections_.closed(static_cast<int>(value));
            continue;
        }
        if (auto reason = reason_code(event, value)) record(*reason, describe(event, value), address.to_string());
    }
    arm();
}

void HandshakeMonitor::record(ReasonCode reason, const std::string& detail, const std::string& endpoint) {
    ++failures_[reason];
    if (auto suppressed = log_throttle_.admit(reason)) {
        log::warning("refused a connection on {}: {} ({}){}", endpoint, detail, reason.str(),
                     LogThrottle::suppressed_note(*suppressed));
    }
}

}  // namespace dpengine
