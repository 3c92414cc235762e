// Watches a socket's ZeroMQ handshakes through libzmq's socket monitor, for the connections
// libzmq itself drops before any message reaches the head: a peer speaking another security
// mechanism (NULL or PLAIN against CURVE), bytes that are not ZMTP, a greeting that never
// completes. Each is counted by reason code and logged (at most one line per reason per
// interval, with the number of others, so a flood cannot flood the journal). CURVE key
// refusals are the ZAP handler's to count and log. It also reports every connection libzmq
// accepts and drops, by file descriptor, for the registration deadline
// (head/registration_deadline.hpp): a socket has one monitor. Runs on the daemon's event loop.
#pragma once

#include "core/log_throttle.hpp"
#include "core/reason.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <zmq.hpp>

namespace dpengine {

class HandshakeMonitor {
public:
    struct ConnectionEvents {
        std::function<void(int fd)> accepted;
        std::function<void(int fd)> closed;
    };

    // `name` is unique within `context` (it names the inproc endpoint of the monitor).
    HandshakeMonitor(boost::asio::io_context& io, zmq::context_t& context, zmq::socket_t& watched,
                     const std::string& name, ConnectionEvents connections = {});
    ~HandshakeMonitor();
    HandshakeMonitor(const HandshakeMonitor&) = delete;
    HandshakeMonitor& operator=(const HandshakeMonitor&) = delete;

    // Failed handshakes by reason code.
    const std::map<std::string, uint64_t>& failures() const { return failures_; }

    // The reason code for a ZMQ_EVENT_HANDSHAKE_FAILED_* event and its value; empty for events
    // that are not counted here (ZAP refusals).
    static std::optional<Reason> reason_code(uint16_t event, uint32_t value);

    // Handles the events that are waiting now (the caller is about to act on what they say).
    void drain();

private:
    void arm();
    void record(ReasonCode reason, const std::string& detail, const std::string& endpoint);

    zmq::socket_t pair_;
    boost::asio::posix::stream_descriptor watcher_;
    ConnectionEvents connections_;
    std::map<std::string, uint64_t> failures_;
    LogThrottle log_throttle_;
    bool armed_ = false;
};

}  // namespace dpengine
