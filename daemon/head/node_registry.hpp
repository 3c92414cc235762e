// The head's view of the cluster: which node runs which ranks. Headless daemons register over
// the node link (NODE_HELLO on the rank socket, CURVE-authenticated like their ranks), get a
// block of ranks (the one they configured, or one the head picks), and report their ranks'
// processes (NODE_STATUS). assign() moves ranks between nodes: the old holders drain and stop
// them, the epoch goes up, the new holder starts them; requests only ever go to READY ranks,
// so none is lost on the way. Runs on the daemon's event loop, like the rank link it uses.
#pragma once

#include "core/config.hpp"
#include "core/reason.hpp"
#include "core/error.hpp"
#include "core/node_info.hpp"
#include "core/wire.hpp"
#include "head/loop_stall.hpp"
#include "head/rank_link.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace dpengine {

class NodeRegistry {
public:
    struct Hooks {
        // One of the head's own ranks moves to another node: stop its process for good.
        std::function<void(uint32_t rank)> release_local;
        // Ranks move to the head: it runs exactly ranks start .. start + count - 1 from now on.
        std::function<void(uint32_t start, uint32_t count)> assign_local;
        // A node registered, was lost, or its ranks changed.
        std::function<void()> nodes_changed;
    };

    NodeRegistry(boost::asio::io_context& io, const Config& config, RankLink& link, Hooks hooks);

    // A NODE_* message from the rank socket (RankLink::set_node_handler).
    void on_message(const std::string& routing_id, const wire::Envelope& envelope, const std::string& key_node,
                    const std::string& peer);

    std::vector<NodeInfo> nodes() const;
    // What a headless node last reported about one of its ranks' process.
    std::optional<wire::NodeRankStatus> rank_process(uint32_t rank) const;

    // Gives `node` exactly ranks start .. start + count - 1, moving them from their holders.
    // Errors carry a reason code: "invalid-args" (unknown node, out of range, count 0, a block
    // that would split another node's) or "bad-state" (the node is not connected, another
    // move is under way). Returns once the move has begun; it completes in the background.
    Status assign(const std::string& node, uint32_t start, uint32_t count);

private:
    using Clock = std::chrono::steady_clock;
    struct Entry {
        std::string name;
        bool local = false;    // the head itself
        bool dynamic = false;  // asked the head for a block (no start_rank of its own)
        uint32_t wanted = 0;
        uint32_t start = 0, count = 0;
        std::string routing_id;
        std::string address;
        uint64_t incarnation = 0;
        bool connected = false;
        bool stopped = false;  // it said goodbye (stopped in order), rather than being lost
        Clock::time_point last_heard{};
        uint64_t since = 0;  // Unix seconds of the last connect/loss
        std::map<uint32_t, wire::NodeRankStatus> processes;
    };
    struct Move {
        std::string target;
        uint32_t start = 0, count = 0;
        std::vector<uint32_t> stopping;  // ranks whose holder stops them (drained first)
        Clock::time_point deadline{};
    };

    void on_hello(const std::string& routing_id, const wire::NodeHello& hello, const std::string& key_node,
                  const std::string& peer);
    void on_status(Entry& entry, const wire::NodeStatus& status);
    void on_goodbye(Entry& entry);
    void refuse(const std::string& routing_id, const std::string& node, ReasonCode code, const std::string& message);
    // The entry holding `rank`, or nullptr.
    Entry* holder(uint32_t rank);
    const Entry* holder(uint32_t rank) const;
    // Whether ranks [start, start+count) are free for `node`: not held by another node, not
    // owned by another node's ranks. Returns the problem, or "".
    std::string block_problem(const std::string& node, uint32_t start, uint32_t count) const;
    std::optional<uint32_t> free_block(const std::string& node, uint32_t count) const;
    void take_block(Entry& entry, uint32_t start, uint32_t count);
    wire::NodeConfig config_for(const Entry& entry) const;
    void tick();
    void finish_move();
    void changed();

    boost::asio::io_context& io_;
    const Config& config_;
    RankLink& link_;
    Hooks hooks_;
    boost::asio::steady_timer timer_;
    LoopStall loop_stall_;  // how late tick() runs
    std::map<std::string, Entry> nodes_;
    std::unordered_map<std::string, std::string> node_of_connection_;
    std::optional<Move> move_;
};

}  // namespace dpengine
