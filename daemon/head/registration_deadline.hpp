// The connections on the head's rank port that have not registered yet, and the deadline
// they have for it (handshake.register_timeout). A connection registers when the head sends
// it its configuration (a rank's CONFIG, a node's NODE_CONFIG); one that does not within the
// deadline is closed, so that peers (with an authorized key, or anyone without CURVE) cannot
// hold connections, and the memory and descriptors behind them, that serve no rank or node.
//
// ZeroMQ gives a ROUTER no call to drop one connection, so this works on file descriptors:
// libzmq's monitor reports each one it accepts and drops, and every message names the one it
// came on (ZMQ_SRCFD). Closing is shutdown(2): libzmq sees the connection end, frees it and
// closes the descriptor itself. A descriptor is shut down only while it still is the
// connection that was accepted (same local and remote address), never one reused since.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <string>
#include <unordered_map>
#include <vector>

namespace dpengine {

class RegistrationDeadline {
public:
    using Clock = std::chrono::steady_clock;

    void accepted(int fd, Clock::time_point now);
    void closed(int fd) { pending_.erase(fd); }
    void registered(int fd) { pending_.erase(fd); }

    // Shuts down every connection accepted LIMIT or longer ago; returns their peer addresses.
    std::vector<std::string> expire(Clock::time_point now, Clock::duration limit);
    size_t pending() const { return pending_.size(); }

private:
    struct Addresses {
        sockaddr_storage local{}, remote{};
        socklen_t local_size = 0, remote_size = 0;
        bool operator==(const Addresses& other) const;
    };
    static Addresses addresses_of(int fd);
    static std::string describe(const Addresses& addresses);

    struct Pending {
        Clock::time_point accepted_at;
        Addresses addresses;
    };
    std::unordered_map<int, Pending> pending_;
};

}  // namespace dpengine
