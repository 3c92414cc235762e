// /org/dpengine1/node/NAME (the name escaped as sd_bus_path_encode does), org.dpengine1.Node:
// one object per node of the cluster view, each read from that node's NodeInfo alone.
#pragma once

#include "bus/object_table.hpp"

#include <span>

namespace dpengine::bus {

class NodeBus : public ListedObjects<NodeInfo> {
public:
    using Snapshot = NodeInfo;
    using ListedObjects::ListedObjects;

    static std::span<const Property<Snapshot>> properties();
    // userdata: the NodeBus.
    static int find(sd_bus*, const char* path, const char*, void* userdata, void** found, sd_bus_error*);
    static int enumerate(sd_bus*, const char*, void* userdata, char*** paths, sd_bus_error*);
};

}  // namespace dpengine::bus
