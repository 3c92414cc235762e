// The ZAP (ZeroMQ authentication protocol) handler of the head's TCP sockets: admits a CURVE
// client only if its public key is in the authorized-keys list, and names the connection after
// the key's node (the ZAP "user id", which the head reads back from every message). Runs on
// its own thread, bound before the head binds any TCP socket, so no connection is ever
// accepted without a decision. Fails closed: anything but a listed CURVE key gets status 400.
#pragma once

#include "core/keys.hpp"

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

namespace dpengine {

class ZapHandler {
public:
    ZapHandler(zmq::context_t& context, std::vector<keys::AuthorizedKey> authorized);
    ~ZapHandler();
    ZapHandler(const ZapHandler&) = delete;
    ZapHandler& operator=(const ZapHandler&) = delete;

    // The key's entry, for rank-ownership checks once a connection says HELLO.
    std::optional<keys::AuthorizedKey> find_node(const std::string& node) const;
    // The allow-list as it is now.
    std::vector<keys::AuthorizedKey> authorized() const;
    uint64_t refusals() const { return refusals_; }
    // A new allow-list (config reload); connections already admitted stay.
    void replace(std::vector<keys::AuthorizedKey> authorized);

private:
    void run();
    const keys::AuthorizedKey* find_key(const std::string& public_z85) const;

    zmq::socket_t socket_;
    std::vector<keys::AuthorizedKey> authorized_;
    mutable std::mutex mutex_;
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> refusals_{0};
    std::thread thread_;
};

}  // namespace dpengine
