// ZeroMQ endpoints and socket settings shared by the head and the ranks: every socket is
// bounded (message size, queues) and closes without lingering.
#pragma once

#include <zmq.hpp>

#include <cstdint>
#include <string>

namespace dpengine::transport {

// "ipc://DIR/NAME".
std::string ipc_endpoint(const std::string& directory, const std::string& name);
// "tcp://HOST:PORT", with IPv6 literals in brackets.
std::string tcp_endpoint(const std::string& host, uint16_t port);
// The path of an ipc:// endpoint, empty for other transports.
std::string ipc_path(const std::string& endpoint);

// Applies the settings every socket gets: ZMQ_MAXMSGSIZE, high water marks, no linger,
// IPv6 enabled, ZMTP heartbeats.
void configure(zmq::socket_t& socket, uint32_t max_message_bytes);

}  // namespace dpengine::transport
