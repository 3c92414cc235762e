#include "transport.hpp"

namespace dpengine::transport {

std::string ipc_endpoint(const std::string& directory, const std::string& name) {
    return "ipc://" + directory + "/" + name;
}

std::string tcp_endpoint(const std::string& host, uint16_t port) {
    bool ipv6 = host.find(':') != std::string::npos;
    return "tcp://" + (ipv6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

std::string ipc_path(const std::string& endpoint) {
    constexpr std::string_view prefix = "ipc://";
    if (endpoint.rfind(prefix, 0) != 0) return {};
    return endpoint.substr(prefix.size());
}

void configure(zmq::socket_t& socket, uint32_t max_message_bytes) {
    socket.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(max_message_bytes));
    // Queues deep enough for bursts of requests, bounded so a stuck peer cannot eat memory.
    socket.set(zmq::sockopt::sndhwm, 100000);
    socket.set(zmq::sockopt::rcvhwm, 100000);
    socket.set(zmq::sockopt::linger, 0);
    socket.set(zmq::sockopt::ipv6, 1);
    socket.set(zmq::sockopt::heartbeat_ivl, 1000);
    socket.set(zmq::sockopt::heartbeat_timeout, 5000);
    socket.set(zmq::sockopt::handshake_ivl, 5000);
}

}  // namespace dpengine::transport
