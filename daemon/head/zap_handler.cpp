#include "zap_handler.hpp"

#include "core/log.hpp"
#include "core/quiet_thread.hpp"
#include "core/log_throttle.hpp"

namespace dpengine {

ZapHandler::ZapHandler(zmq::context_t& context, std::vector<keys::AuthorizedKey> authorized)
    : socket_(context, zmq::socket_type::rep), authorized_(std::move(authorized)) {
    socket_.set(zmq::sockopt::linger, 0);
    socket_.bind("inproc://zeromq.zap.01");
    thread_ = start_quiet_thread<std::thread>([this] { run(); });
}

ZapHandler::~ZapHandler() {
    stop_ = true;
    thread_.join();
}

const keys::AuthorizedKey* ZapHandler::find_key(const std::string& public_z85) const {
    for (const auto& k : authorized_) {
        if (k.public_z85 == public_z85) return &k;
    }
    return nullptr;
}

void ZapHandler::replace(std::vector<keys::AuthorizedKey> authorized) {
    std::lock_guard lock(mutex_);
    authorized_ = std::move(authorized);
}

std::optional<keys::AuthorizedKey> ZapHandler::find_node(const std::string& node) const {
    std::lock_guard lock(mutex_);
    for (const auto& k : authorized_) {
        if (k.node == node) return k;
    }
    return std::nullopt;
}

std::vector<keys::AuthorizedKey> ZapHandler::authorized() const {
    std::lock_guard lock(mutex_);
    return authorized_;
}

void ZapHandler::run() {
    // At most one line per reason every 10 s, however many keys and addresses a flood uses.
    LogThrottle log_throttle;
    while (!stop_) {
        zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
        if (zmq::poll(&item, 1, std::chrono::milliseconds(100)) == 0) continue;
        std::vector<zmq::message_t> request;
        for (;;) {
            zmq::message_t frame;
            if (!socket_.recv(frame, zmq::recv_flags::none)) break;
            bool more = frame.more();
            if (request.size() < 16) request.push_back(std::move(frame));
            if (!more) break;
        }
        // version, request id, domain, address, identity, mechanism, credentials...
        std::string request_id = request.size() > 1 ? request[1].to_string() : "";
        std::string address = request.size() > 3 ? request[3].to_string() : "?";
        std::string mechanism = request.size() > 5 ? request[5].to_string() : "";
        std::string status = "400", text = "not authorized", user;
        std::string key_z85;
        if (request.size() >= 7 && request[0].to_string_view() == "1.0" && mechanism == "CURVE" &&
            request[6].size() == 32) {
            char z85[41];
            zmq_z85_encode(z85, static_cast<const uint8_t*>(request[6].data()), 32);
            key_z85 = z85;
            std::lock_guard lock(mutex_);
            if (const auto* k = find_key(key_z85)) {
                status = "200";
                text = "OK";
                user = k->node;
            }
        }
        if (status != "200") {
            ++refusals_;
            if (auto suppressed = log_throttle.admit("unauthorized-key")) {
                std::string what = key_z85.empty() ? "mechanism " + (mechanism.empty() ? std::string("?") : mechanism)
                                                   : "key " + keys::fingerprint(key_z85);
                log::warning("refused a connection from {}: {} is not in security.authorized_keys (unauthorized-key){}",
                             address, what, LogThrottle::suppressed_note(*suppressed));
            }
        }
        std::array<std::string, 6> reply = {"1.0", request_id, status, text, user, ""};
        for (size_t i = 0; i < reply.size(); ++i) {
            socket_.send(zmq::buffer(reply[i]),
                         i + 1 < reply.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
        }
    }
}

}  // namespace dpengine
