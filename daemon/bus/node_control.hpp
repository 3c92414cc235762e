// What the bus adapter (and anything else that drives a node) may ask of it. Implemented by
// the manager; keeps the D-Bus code a thin layer with no knowledge of processes or sockets.
// It lives with the bus, its caller, so that the bus layer needs nothing from node/ above it,
// and it names ranks by head/rank_info.hpp alone, so the bus does not pull in ZeroMQ.
#pragma once

#include "core/error.hpp"
#include "core/node_info.hpp"
#include "head/rank_info.hpp"

#include <optional>
#include <string>
#include <vector>

namespace dpengine {

class NodeControl {
public:
    virtual ~NodeControl() = default;

    virtual std::string role() const = 0;
    virtual std::string node_name() const = 0;
    virtual uint32_t dp_size() const = 0;
    virtual uint64_t epoch() const = 0;
    virtual uint32_t ready_ranks() const = 0;
    // Every rank this node knows: all of them on a head, its own on a headless node.
    virtual std::vector<RankInfo> ranks() const = 0;
    // One of them, as ranks() has it, built alone (the bus reads one rank object at a time);
    // nullopt for a rank this node does not know.
    virtual std::optional<RankInfo> rank_info(uint32_t rank) const = 0;

    // Errors carry a reason code (core/reason.hpp): invalid-rank, not-local, bad-state, failed.
    virtual Status start_rank(uint32_t rank) = 0;
    virtual Status stop_rank(uint32_t rank) = 0;     // drains first, then stops
    virtual Status restart_rank(uint32_t rank) = 0;  // drains, stops, starts again
    virtual Status drain_rank(uint32_t rank) = 0;
    virtual Status undrain_rank(uint32_t rank) = 0;
    virtual Status stop_node() = 0;
    virtual Status start_node() = 0;
    virtual Status reload() = 0;  // re-read the configuration; refuses a broken one

    // The cluster: on a head every node (itself too); on a headless node itself and its head.
    virtual std::vector<NodeInfo> nodes() const { return {}; }
    // One of them by name (a cluster has a handful of nodes: nodes() scanned).
    std::optional<NodeInfo> node_info(const std::string& name) const {
        for (auto& info : nodes()) {
            if (info.name == name) return info;
        }
        return std::nullopt;
    }
    // Head: give a headless node exactly ranks start .. start + count - 1, moving them from
    // their holders. Errors carry a reason code: invalid-args, bad-state, not-local.
    virtual Status assign_ranks(const std::string& node, uint32_t start, uint32_t count) {
        (void)node, (void)start, (void)count;
        return Error{"ranks are assigned on the head", "not-local"};
    }
};

}  // namespace dpengine
