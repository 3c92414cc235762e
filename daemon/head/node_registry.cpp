#include "head/node_registry.hpp"

#include "core/log.hpp"

#include <boost/asio/post.hpp>

#include <algorithm>
#include <ctime>

namespace dpengine {

namespace {

uint64_t unix_now() { return static_cast<uint64_t>(std::time(nullptr)); }

std::chrono::steady_clock::duration seconds(double s) {
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

// ZeroMQ names an IPv4 peer of a dual-stack socket "::ffff:A.B.C.D"; people know it as A.B.C.D.
std::string plain_address(const std::string& peer) {
    const std::string mapped = "::ffff:";
    if (peer.rfind(mapped, 0) == 0 && peer.find('.') != std::string::npos) return peer.substr(mapped.size());
    return peer;
}

bool overlaps(uint32_t a, uint32_t an, uint32_t b, uint32_t bn) { return an && bn && a < b + bn && b < a + an; }

}  // namespace

NodeRegistry::NodeRegistry(boost::asio::io_context& io, const Config& config, RankLink& link, Hooks hooks)
    : io_(io), config_(config), link_(link), hooks_(std::move(hooks)), timer_(io) {
    Entry& head = nodes_[config_.node.name];
    head.name = config_.node.name;
    head.local = true;
    head.connected = true;
    head.start = config_.first_local_rank();
    head.count = config_.size_local();
    head.wanted = head.count;
    head.since = unix_now();
    tick();
}

void NodeRegistry::changed() {
    if (hooks_.nodes_changed) hooks_.nodes_changed();
}

NodeRegistry::Entry* NodeRegistry::holder(uint32_t rank) {
    for (auto& [name, e] : nodes_) {
        if (e.count && rank >= e.start && rank < e.start + e.count) return &e;
    }
    return nullptr;
}

const NodeRegistry::Entry* NodeRegistry::holder(uint32_t rank) const {
    return const_cast<NodeRegistry*>(this)->holder(rank);
}

std::string NodeRegistry::block_problem(const std::string& node, uint32_t start, uint32_t count) const {
    const uint32_t size = config_.dp_size();
    if (uint64_t{start} + count > size) {
        return "ranks " + describe_block(start, count) + " are out of range: the DP size is " + std::to_string(size) +
            " (ranks " + describe_block(0, size) + ")";
    }
    for (const auto& [name, e] : nodes_) {
        if (name != node && overlaps(start, count, e.start, e.count)) {
            return "ranks " + describe_block(start, count) + " overlap node '" + name + "' ranks " +
                describe_block(e.start, e.count);
        }
    }
    for (uint32_t r = start; r < start + count; ++r) {
        std::string owner = link_.owner_of(r);
        if (!owner.empty() && owner != node)
            return "rank " + std::to_string(r) + " is registered by node '" + owner + "'";
    }
    // Ranks another key's ranks= reserves are that node's, registered or not.
    for (const auto& key : link_.authorized_keys()) {
        if (key.node == node || !key.ranks) continue;
        uint32_t first = key.ranks->first, last = key.ranks->second;
        for (uint32_t r = std::max(start, first); r < start + count && r <= last; ++r) {
            if (link_.owner_of(r) != node) {
                return "rank " + std::to_string(r) + " is reserved for node '" + key.node +
                    "' (ranks=" + std::to_string(first) + "-" + std::to_string(last) + " in security.authorized_keys)";
            }
        }
    }
    if (auto allowed = link_.key_ranks(node);
        allowed && count && (start < allowed->first || start + count - 1 > allowed->second)) {
        return "node '" + node + "' may only run ranks " + std::to_string(allowed->first) + "-" +
            std::to_string(allowed->second) + " (its line in security.authorized_keys)";
    }
    return {};
}

std::optional<uint32_t> NodeRegistry::free_block(const std::string& node, uint32_t count) const {
    const uint32_t size = config_.dp_size();
    for (uint32_t start = 0; uint64_t{start} + count <= size; ++start) {
        if (block_problem(node, start, count).empty()) return start;
    }
    return std::nullopt;
}

void NodeRegistry::take_block(Entry& entry, uint32_t start, uint32_t count) {
    entry.start = start;
    entry.count = count;
    for (uint32_t r = start; r < start + count; ++r) link_.set_owner(r, entry.name);
}

wire::NodeConfig NodeRegistry::config_for(const Entry& entry) const {
    wire::NodeConfig block{config_.dp_size(), entry.start, entry.count, link_.epoch(), config_.node.name, {}};
    for (const auto& info : link_.ranks()) {
        if (info.rank >= entry.start && info.rank - entry.start < entry.count) {
            block.states.push_back(to_string(info.state));
            block.activity.push_back({info.group_kind.empty() ? "none" : info.group_kind, info.group_epoch, info.wave,
                                      info.memory_used, info.steps_per_second, info.dummy_step_share, info.device,
                                      info.in_flight, info.waiting, info.served});
        }
    }
    return block;
}

void NodeRegistry::refuse(const std::string& routing_id, const std::string& node, ReasonCode code,
                          const std::string& message) {
    log::warning("refused node '{}': {} ({})", node, message, code.str());
    link_.refuse_peer(routing_id, code, message);
}

void NodeRegistry::on_message(const std::string& routing_id, const wire::Envelope& envelope,
                              const std::string& key_node, const std::string& peer) {
    if (auto* hello = std::get_if<wire::NodeHello>(&envelope.message)) {
        on_hello(routing_id, *hello, key_node, peer);
        // Epochs only go up, also across a restart of the head.
        if (node_of_connection_.count(routing_id)) link_.raise_epoch(envelope.epoch);
        return;
    }
    auto known = node_of_connection_.find(routing_id);
    auto* status = std::get_if<wire::NodeStatus>(&envelope.message);
    if (known == node_of_connection_.end()) {
        // A head that restarted does not know the node: it registers again. (The rank link
        // limits how often an unregistered connection is answered.)
        link_.refuse_peer(routing_id, "not-registered", "send NODE_HELLO first");
        return;
    }
    if (!status) {
        link_.send_to(routing_id,
                      wire::ErrorReply{ReasonCode("unexpected-type"),
                                       std::string("a node may not send ") + wire::type_name(envelope.message)});
        return;
    }
    Entry& entry = nodes_.at(known->second);
    on_status(entry, *status);
}

void NodeRegistry::on_hello(const std::string& routing_id, const wire::NodeHello& hello, const std::string& key_node,
                            const std::string& peer_address) {
    const std::string& node = hello.node;
    const std::string peer = plain_address(peer_address);
    // With CURVE the key names the node; a node may speak only for itself.
    if (!key_node.empty() && key_node != node) {
        return refuse(routing_id, node, "node-mismatch",
                      "this connection's key belongs to node '" + key_node + "', not '" + node + "'");
    }
    if (node == config_.node.name) {
        return refuse(routing_id, node, "node-mismatch",
                      "'" + node +
                          "' is the head's own name; give the node another "
                          "node.name");
    }
    if (hello.dp_size != 0 && hello.dp_size != config_.dp_size()) {
        return refuse(routing_id, node, "config-mismatch",
                      "data_parallel.size: this node says " + std::to_string(hello.dp_size) + ", the head has " +
                          std::to_string(config_.dp_size()));
    }
    if (!hello.model.empty() && hello.model != config_.engine.model) {
        return refuse(
            routing_id, node, "config-mismatch",
            "engine.model: this node says '" + hello.model + "', the head has '" + config_.engine.model + "'");
    }
    if (hello.count == 0 || hello.count > config_.dp_size()) {
        return refuse(routing_id, node, "rank-out-of-range",
                      "the node asks for " + std::to_string(hello.count) + " rank(s); the DP size is " +
                          std::to_string(config_.dp_size()));
    }
    auto existing = nodes_.find(node);
    // Bounded: every node holds a rank or waits for one; more names than that are a mistake
    // (or a peer inventing them, on a network without CURVE).
    const size_t max_nodes = std::max<size_t>(64, 2 * size_t{config_.dp_size()});
    if (existing == nodes_.end() && nodes_.size() >= max_nodes) {
        return refuse(routing_id, node, "too-many-nodes",
                      "the head already knows " + std::to_string(nodes_.size()) + " nodes, the most it keeps");
    }
    if (existing != nodes_.end() && existing->second.connected && existing->second.routing_id != routing_id &&
        existing->second.incarnation != hello.incarnation) {
        return refuse(routing_id, node, "duplicate-node",
                      "node '" + node + "' is already connected from " + existing->second.address);
    }
    // Which block: the one this head gave it before (it reconnected); else the one it runs
    // now (this head restarted; ranks may have been moved since its configuration was
    // written) when that is free; else the configured one; else the first free one.
    std::optional<uint32_t> start;
    uint32_t count = hello.count;
    if (existing != nodes_.end() && existing->second.count) {
        start = existing->second.start;
    } else if (hello.held_start && hello.held_count > 0 &&
               block_problem(node, *hello.held_start, hello.held_count).empty()) {
        start = hello.held_start;
        count = hello.held_count;
    } else if (hello.start_rank) {
        if (auto problem = block_problem(node, *hello.start_rank, hello.count); !problem.empty()) {
            return refuse(routing_id, node, "rank-conflict",
                          problem + "; fix data_parallel.start_rank or leave it unset");
        }
        start = hello.start_rank;
    } else {
        start = free_block(node, hello.count);
    }
    Entry& entry = nodes_[node];
    if (existing != nodes_.end() && !entry.routing_id.empty()) node_of_connection_.erase(entry.routing_id);
    entry.name = node;
    entry.dynamic = !hello.start_rank;
    entry.wanted = hello.count;
    entry.routing_id = routing_id;
    entry.address = peer;
    entry.incarnation = hello.incarnation;
    entry.connected = true;
    entry.stopped = false;
    entry.last_heard = Clock::now();
    entry.since = unix_now();
    node_of_connection_[routing_id] = node;
    if (start && entry.count == 0) {
        take_block(entry, *start, count);
    } else if (start) {
        take_block(entry, entry.start, entry.count);
    }
    link_.send_to(routing_id, config_for(entry));
    if (entry.count) {
        log::info("node '{}' registered from {} (build {}): ranks {}{}", node, peer.empty() ? "-" : peer, hello.build,
                  describe_block(entry.start, entry.count), entry.dynamic ? " (assigned by the head)" : "");
    } else {
        log::warning(
            "node '{}' registered from {}, but no free block of {} rank(s) is left; it waits for "
            "'dpctl assign {} --start-rank R --count N'",
            node, peer.empty() ? "-" : peer, hello.count, node);
    }
    changed();
}

void NodeRegistry::on_status(Entry& entry, const wire::NodeStatus& status) {
    if (status.leaving) return on_goodbye(entry);
    entry.last_heard = Clock::now();
    if (!entry.connected) {
        entry.connected = true;
        entry.stopped = false;
        entry.since = unix_now();
        log::info("node '{}' is connected again", entry.name);
        changed();
    }
    entry.processes.clear();
    for (const auto& r : status.ranks) {
        if (r.rank < config_.dp_size()) entry.processes[r.rank] = r;
    }
    // The answer doubles as the head's heartbeat and keeps the node's block in step.
    link_.send_to(entry.routing_id, config_for(entry));
}

// The node stops in order: its ranks stop with it, which is no failure. They are marked
// stopped now, before their heartbeats could be missed; the node keeps its block for when it
// comes back.
void NodeRegistry::on_goodbye(Entry& entry) {
    if (!entry.connected) return;
    log::notice("node '{}' is stopping (ranks {}); its ranks stop with it [node-stopped]", entry.name,
                describe_block(entry.start, entry.count));
    entry.connected = false;
    entry.stopped = true;
    entry.since = unix_now();
    entry.processes.clear();
    const RankLink::StopCause cause{"stopped with its node '" + entry.name + "'", "node-stopped"};
    for (uint32_t r = entry.start; r < entry.start + entry.count; ++r) {
        if (link_.owner_of(r) == entry.name) link_.stop(r, cause);
    }
    changed();
}

std::optional<wire::NodeRankStatus> NodeRegistry::rank_process(uint32_t rank) const {
    const Entry* e = holder(rank);
    if (!e || e->local) return std::nullopt;
    auto it = e->processes.find(rank);
    if (it == e->processes.end()) return std::nullopt;
    return it->second;
}

std::vector<NodeInfo> NodeRegistry::nodes() const {
    std::vector<NodeInfo> out;
    for (const auto& [name, e] : nodes_) {
        NodeInfo info;
        info.name = name;
        info.role = e.local ? "head" : "headless";
        info.state = e.local ? "local" : e.connected ? "connected" : e.stopped ? "stopped" : "lost";
        info.address = e.local ? link_.endpoint() : e.address;
        info.start_rank = e.start;
        info.count = e.count;
        info.wanted = e.wanted;
        info.since = e.since;
        info.incarnation = e.incarnation;
        out.push_back(std::move(info));
    }
    return out;
}

Status NodeRegistry::assign(const std::string& node, uint32_t start, uint32_t count) {
    auto it = nodes_.find(node);
    if (it == nodes_.end()) {
        std::string known;
        for (const auto& [name, e] : nodes_) known += (known.empty() ? "" : ", ") + name;
        return Error{"unknown node '" + node + "'; the nodes are: " + known + " ('dpctl nodes')", "invalid-args"};
    }
    Entry& target = it->second;
    if (count == 0) return Error{"count must be 1 or more", "invalid-args"};
    const uint32_t size = config_.dp_size();
    if (uint64_t{start} + count > size) {
        return Error{"ranks " + describe_block(start, count) + " are out of range: the DP size is " +
                         std::to_string(size) + " (ranks " + describe_block(0, size) + ")",
                     "invalid-args"};
    }
    if (auto allowed = link_.key_ranks(node);
        allowed && (start < allowed->first || start + count - 1 > allowed->second)) {
        return Error{"node '" + node + "' may only run ranks " + std::to_string(allowed->first) + "-" +
                         std::to_string(allowed->second) + " (its line in security.authorized_keys)",
                     "invalid-args"};
    }
    // Every other holder must keep a contiguous block: the new one may take all of another
    // node's ranks, or some from either end, but not cut it in two.
    for (const auto& [name, e] : nodes_) {
        if (name == node || !overlaps(start, count, e.start, e.count)) continue;
        bool keeps_front = e.start<start, keeps_back = e.start + e.count> start + count;
        if (keeps_front && keeps_back) {
            return Error{"ranks " + describe_block(start, count) + " would split node '" + name + "' ranks " +
                             describe_block(e.start, e.count) + " in two; move ranks from one end of its block",
                         "invalid-args"};
        }
    }
    if (move_) {
        return Error{"ranks " + describe_block(move_->start, move_->count) + " are still moving to node '" +
                         move_->target + "'; wait until they are ready",
                     "bad-state"};
    }
    if (!target.connected) {
        return Error{"node '" + node + "' is not connected to the head; it cannot start ranks", "bad-state"};
    }
    if (target.start == start && target.count == count) return Ok{};

    Move move{node, start, count, {}, Clock::now() + seconds(config_.daemon.stop_timeout)};
    for (uint32_t r = 0; r < size; ++r) {
        bool in_new = r >= start && r < start + count;
        const Entry* h = holder(r);
        bool held_by_target = h == &target;
        if ((in_new && h && !held_by_target) || (!in_new && held_by_target)) move.stopping.push_back(r);
    }
    for (uint32_t r : move.stopping) {
        if (link_.state_of(r) == RankState::ready || link_.state_of(r) == RankState::unhealthy) (void)link_.drain(r);
    }
    log::notice("assigning ranks {} to node '{}' (it had {}): draining {} rank(s) on their old node(s) first",
                describe_block(start, count), node, describe_block(target.start, target.count), move.stopping.size());
    move_ = std::move(move);
    boost::asio::post(io_, [this] { tick(); });
    return Ok{};
}

// Once the ranks that move are idle (or daemon.stop_timeout passed), their holders stop them,
// the epoch goes up and the new holder starts them.
void NodeRegistry::finish_move() {
    Move move = std::move(*move_);
    move_.reset();
    Entry& target = nodes_.at(move.target);
    std::vector<uint32_t> leaving_head;  // the head's own ranks among those that move
    for (uint32_t r : move.stopping) {
        if (const Entry* h = holder(r); h && h->local) leaving_head.push_back(r);
    }
    const uint64_t epoch = link_.bump_epoch();
    std::vector<Entry*> shrunk;
    for (auto& [name, e] : nodes_) {
        if (&e == &target || !overlaps(move.start, move.count, e.start, e.count)) continue;
        uint32_t begin = e.start, end = e.start + e.count;
        if (move.start <= begin) begin = std::min(end, move.start + move.count);
        else end = move.start;
        e.start = end > begin ? begin : 0;
        e.count = end > begin ? end - begin : 0;
        shrunk.push_back(&e);
    }
    // The old holders learn their new block before their ranks are told to exit, so that they
    // do not restart them.
    for (Entry* e : shrunk) {
        if (!e->local && e->connected) link_.send_to(e->routing_id, wire::Assign{e->start, e->count, epoch});
    }
    for (uint32_t r : move.stopping) {
        bool in_new = r >= move.start && r < move.start + move.count;
        link_.set_owner(r, in_new ? move.target : std::string());
        bool head_rank = std::find(leaving_head.begin(), leaving_head.end(), r) != leaving_head.end();
        if (head_rank && hooks_.release_local) hooks_.release_local(r);  // the manager stops the process
        else link_.stop(r);
    }
    target.start = move.start;
    target.count = move.count;
    for (uint32_t r = move.start; r < move.start + move.count; ++r) link_.set_owner(r, target.name);
    if (!target.local) link_.send_to(target.routing_id, wire::Assign{target.start, target.count, epoch});
    else if (hooks_.assign_local) hooks_.assign_local(target.start, target.count);
    log::notice("epoch {}: node '{}' runs ranks {}", epoch, target.name, describe_block(target.start, target.count));
    changed();
}

void NodeRegistry::tick() {
    const auto now = Clock::now();
    const auto silence = seconds(config_.handshake.heartbeat_timeout);
    // A head that did not run for a while (stalled) does not blame its nodes for that time.
    const auto stall = loop_stall_.stalled_for(now, seconds(config_.handshake.heartbeat_interval));
    for (auto& [name, e] : nodes_) {
        e.last_heard = LoopStall::excused(e.last_heard, stall, now);
        if (e.local || !e.connected || now - e.last_heard <= silence) continue;
        e.connected = false;
        e.since = unix_now();
        log::warning("lost node '{}' (ranks {}): no status for {} s (handshake.heartbeat_timeout)", name,
                     describe_block(e.start, e.count), config_.handshake.heartbeat_timeout);
        changed();
    }
    if (move_) {
        bool idle = std::all_of(move_->stopping.begin(), move_->stopping.end(),
                                [this](uint32_t r) { return link_.in_flight_on(r) == 0; });
        if (idle || now >= move_->deadline) finish_move();
    }
    timer_.expires_after(std::chrono::milliseconds(move_ ? 20 : 250));
    loop_stall_.due_at(timer_.expiry());
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) tick();
    });
}

}  // namespace dpengine
