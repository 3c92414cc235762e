// /org/dpengine1, org.dpengine1.Manager: the node's figures as properties, the lists of ranks
// and nodes, and the methods that change things (each through polkit.hpp's authorize_then).
#pragma once

#include "bus/api.hpp"
#include "bus/object_table.hpp"
#include "bus/node_control.hpp"

#include <span>
#include <string>

namespace dpengine::bus {

using ManagerSnapshot = ManagerProperties;

ManagerSnapshot manager_snapshot(const NodeControl& node);

class ManagerBus {
public:
    using Snapshot = ManagerSnapshot;

    explicit ManagerBus(NodeControl& node) : node_(node) {}
    ManagerBus(const ManagerBus&) = delete;
    ManagerBus& operator=(const ManagerBus&) = delete;

    static std::span<const Property<Snapshot>> properties();
    static std::span<const sd_bus_vtable> methods();
    // userdata: the ManagerBus; its node's figures now.
    static const Snapshot& snapshot_of(void* userdata);

    NodeControl& node() { return node_; }

private:
    NodeControl& node_;
    Snapshot current_;  // what the property being read comes from
};

}  // namespace dpengine::bus
