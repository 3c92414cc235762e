#include "bus/node_bus.hpp"

#include "bus/api.hpp"

#include <cstdlib>
#include <memory>
#include <vector>

namespace dpengine::bus {

namespace {

// Node state changes are rare but not signalled per property: Manager's Epoch signals a change
// of placement; read the objects (or ListNodes) then.
const Property<NodeInfo> node_properties[] = {
    member<&NodeInfo::name>("Name", constant),
    member<&NodeInfo::role>("Role", constant),
    member<&NodeInfo::state>("State", read_when_needed),
    member<&NodeInfo::address>("Address", read_when_needed),
    member<&NodeInfo::start_rank>("StartRank", read_when_needed),
    member<&NodeInfo::count>("Count", read_when_needed),
    member<&NodeInfo::wanted>("Wanted", read_when_needed),
    member<&NodeInfo::since>("Since", read_when_needed),
    member<&NodeInfo::incarnation>("Incarnation", read_when_needed),
};

}  // namespace

std::span<const Property<NodeInfo>> NodeBus::properties() { return node_properties; }

int NodeBus::find(sd_bus*, const char* path, const char*, void* userdata, void** found, sd_bus_error*) {
    auto& self = *static_cast<NodeBus*>(userdata);
    char* name = nullptr;
    if (sd_bus_path_decode(path, node_path_prefix, &name) <= 0) return 0;
    std::unique_ptr<char, decltype(&free)> owned(name, &free);
    return self.found(self.node_.node_info(name), found);
}

int NodeBus::enumerate(sd_bus*, const char*, void* userdata, char*** paths, sd_bus_error*) {
    std::vector<std::string> list;
    for (const auto& info : static_cast<NodeBus*>(userdata)->node_.nodes()) {
        char* path = nullptr;
        if (sd_bus_path_encode(node_path_prefix, info.name.c_str(), &path) < 0) return -ENOMEM;
        list.emplace_back(path);
        free(path);
    }
    return path_list(list, paths);
}

}  // namespace dpengine::bus
