// A headless daemon's link to its head: a DEALER socket to the head's rank endpoint (CURVE with
// this node's key, like its ranks), NODE_HELLO to register, then NODE_STATUS every heartbeat
// interval with its ranks' processes. The head answers each with NODE_CONFIG (the node's block
// of ranks, which doubles as the head's heartbeat) and sends ASSIGN when ranks move. The link
// survives a head restart: the new head does not know the node, refuses its status as
// not-registered, and the node registers again, naming the block it runs. Runs on the
// daemon's event loop.
#pragma once

#include "core/config.hpp"
#include "core/error.hpp"
#include "core/node_info.hpp"
#include "core/wire.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <zmq.hpp>

namespace dpengine {

class NodeLink {
public:
    struct Hooks {
        // The head says which ranks this node runs (at registration, and whenever they move).
        std::function<void(const wire::NodeConfig& block)> assigned;
        // This node's ranks now, for NODE_STATUS.
        std::function<wire::NodeStatus()> status;
        // Connected or lost.
        std::function<void()> changed;
    };

    NodeLink(boost::asio::io_context& io, const Config& config, Hooks hooks);
    ~NodeLink();
    NodeLink(const NodeLink&) = delete;
    NodeLink& operator=(const NodeLink&) = delete;

    Status connect(const std::string& endpoint);
    // A rank changed: report before the next interval.
    void report_soon();
    // The node stops in order: say goodbye to the head (a last NODE_STATUS, leaving), so that
    // it marks this node's ranks stopped rather than finding them silent; send nothing after.
    void leave();
    void close();

    bool connected() const { return connected_; }
    uint64_t epoch() const { return epoch_; }
    // The head as this node sees it (for ListNodes on a headless node).
    NodeInfo head() const;
    // The block the head gave this node, once it did.
    std::optional<std::pair<uint32_t, uint32_t>> block() const { return block_; }
    // The state of one of this node's ranks as the head last reported it ("" if unknown or
    // while the link is down).
    std::string rank_state(uint32_t rank) const;
    // Likewise the rank's DP group and activity; nothing when the head did not send it.
    std::optional<wire::NodeRankActivity> rank_activity(uint32_t rank) const;

private:
    using Clock = std::chrono::steady_clock;
    void arm();
    void drain();
    void on_message(zmq::message_t& payload);
    void tick();
    void send(const wire::Message& message);
    void set_connected(bool connected);

    boost::asio::io_context& io_;
    const Config& config_;
    Hooks hooks_;
    zmq::context_t context_;
    zmq::socket_t socket_;
    boost::asio::posix::stream_descriptor watcher_;
    boost::asio::steady_timer timer_;
    std::string endpoint_;
    uint64_t incarnation_ = 0;
    bool armed_ = false;
    bool registered_ = false;       // the head answered our NODE_HELLO since it last forgot us
    wire::NodeConfig last_config_;  // the head's last answer: its view of this node's ranks
    bool connected_ = false;        // heard from the head within handshake.heartbeat_timeout
    bool report_pending_ = false;
    bool leaving_ = false;  // leave() was called
    Clock::time_point last_heard_{}, last_hello_{};
    uint64_t since_ = 0;
    uint64_t epoch_ = 0;
    std::string head_name_;
    std::string last_refusal_;
    std::optional<std::pair<uint32_t, uint32_t>> block_;  // start, count
};

}  // namespace dpengine
