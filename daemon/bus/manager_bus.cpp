#include "bus/manager_bus.hpp"

#include "bus/api.hpp"
#include "bus/polkit.hpp"
#include "bus/rank_bus.hpp"

#include <memory>
#include <string>

namespace dpengine::bus {

ManagerSnapshot manager_snapshot(const NodeControl& node) {
    return {node.role(), node.node_name(), node.dp_size(), node.epoch(), node.ready_ranks(), DPENGINE_VERSION};
}

namespace {

NodeControl& node_of(void* userdata) { return static_cast<ManagerBus*>(userdata)->node(); }

// A method's reply holding one array, its entries appended by `append_entries(reply, entry)`
// (entry: the array's element signature).
template <class AppendEntries>
int reply_array(sd_bus_message* m, const char* array_signature, AppendEntries&& append_entries) {
    sd_bus_message* reply = nullptr;
    int r = sd_bus_message_new_method_return(m, &reply);
    if (r < 0) return r;
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> owned(reply, &sd_bus_message_unref);
    const std::string entry = std::string(array_signature).substr(1);
    if ((r = sd_bus_message_open_container(reply, 'a', entry.c_str())) < 0) return r;
    if ((r = append_entries(reply, entry.c_str())) < 0) return r;
    if ((r = sd_bus_message_close_container(reply)) < 0) return r;
    return sd_bus_send(nullptr, reply, nullptr);
}

int list_ranks(sd_bus_message* m, void* userdata, sd_bus_error*) {
    return reply_array(m, list_ranks_signature, [&](sd_bus_message* reply, const char* entry) {
        for (const auto& r : node_of(userdata).ranks()) {
            int rc = sd_bus_message_append(reply, entry, r.rank, to_string(r.state), r.node.c_str(), r.device.c_str(),
                                           r.pid, r.in_flight, r.waiting, r.served, r.restarts, r.last_error.c_str(),
                                           r.reason.c_str());
            if (rc < 0) return rc;
        }
        return 0;
    });
}

int list_rank_activity(sd_bus_message* m, void* userdata, sd_bus_error*) {
    return reply_array(m, list_rank_activity_signature, [&](sd_bus_message* reply, const char* entry) {
        for (const auto& info : node_of(userdata).ranks()) {
            int rc = sd_bus_message_append(reply, entry, info.rank, group_kind_of(info).c_str(), info.group_epoch,
                                           info.wave, info.memory_used, info.steps_per_second, info.dummy_step_share);
            if (rc < 0) return rc;
        }
        return 0;
    });
}

int list_nodes(sd_bus_message* m, void* userdata, sd_bus_error*) {
    return reply_array(m, list_nodes_signature, [&](sd_bus_message* reply, const char* entry) {
        for (const auto& n : node_of(userdata).nodes()) {
            int rc = sd_bus_message_append(reply, entry, n.name.c_str(), n.role.c_str(), n.state.c_str(),
                                           n.address.c_str(), n.start_rank, n.count, n.wanted, n.since, n.incarnation);
            if (rc < 0) return rc;
        }
        return 0;
    });
}

template <Status (NodeControl::*Action)(uint32_t)>
int rank_method(sd_bus_message* m, void* userdata, sd_bus_error* error) {
    uint32_t rank = 0;
    if (int r = sd_bus_message_read(m, "u", &rank); r < 0) return r;
    NodeControl& node = node_of(userdata);
    return authorize_then(
        m, action_manage_ranks, [&node, rank] { return (node.*Action)(rank); }, error);
}

template <Status (NodeControl::*Action)(), const char* const& PolkitAction>
int node_method(sd_bus_message* m, void* userdata, sd_bus_error* error) {
    NodeControl& node = node_of(userdata);
    return authorize_then(
        m, PolkitAction, [&node] { return (node.*Action)(); }, error);
}

int assign_ranks(sd_bus_message* m, void* userdata, sd_bus_error* error) {
    const char* node_name = nullptr;
    uint32_t start = 0, count = 0;
    if (int r = sd_bus_message_read(m, "suu", &node_name, &start, &count); r < 0) return r;
    NodeControl& node = node_of(userdata);
    return authorize_then(
        m, action_assign,
        [&node, name = std::string(node_name), start, count] { return node.assign_ranks(name, start, count); }, error);
}

const Property<ManagerSnapshot> manager_properties[] = {
    member<&ManagerSnapshot::role>("Role", constant),
    member<&ManagerSnapshot::node>("NodeName", constant),
    member<&ManagerSnapshot::dp_size>("DPSize", constant),
    member<&ManagerSnapshot::epoch>("Epoch", signals_changes),
    member<&ManagerSnapshot::ready_ranks>("ReadyRanks", signals_changes),
    member<&ManagerSnapshot::version>("Version", constant),
};

constexpr uint64_t anyone = SD_BUS_VTABLE_UNPRIVILEGED;  // access is polkit.hpp's to decide

const sd_bus_vtable manager_methods[] = {
    SD_BUS_METHOD_WITH_ARGS("ListRanks", SD_BUS_NO_ARGS, SD_BUS_RESULT(list_ranks_signature, ranks), list_ranks,
                            anyone),
    SD_BUS_METHOD_WITH_ARGS("ListRankActivity", SD_BUS_NO_ARGS, SD_BUS_RESULT(list_rank_activity_signature, activity),
                            list_rank_activity, anyone),
    SD_BUS_METHOD_WITH_ARGS("StartRank", SD_BUS_ARGS("u", rank), SD_BUS_NO_RESULT,
                            rank_method<&NodeControl::start_rank>, anyone),
    SD_BUS_METHOD_WITH_ARGS("StopRank", SD_BUS_ARGS("u", rank), SD_BUS_NO_RESULT, rank_method<&NodeControl::stop_rank>,
                            anyone),
    SD_BUS_METHOD_WITH_ARGS("RestartRank", SD_BUS_ARGS("u", rank), SD_BUS_NO_RESULT,
                            rank_method<&NodeControl::restart_rank>, anyone),
    SD_BUS_METHOD_WITH_ARGS("DrainRank", SD_BUS_ARGS("u", rank), SD_BUS_NO_RESULT,
                            rank_method<&NodeControl::drain_rank>, anyone),
    SD_BUS_METHOD_WITH_ARGS("UndrainRank", SD_BUS_ARGS("u", rank), SD_BUS_NO_RESULT,
                            rank_method<&NodeControl::undrain_rank>, anyone),
    SD_BUS_METHOD_WITH_ARGS("StopNode", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT,
                            (node_method<&NodeControl::stop_node, action_manage_node>), anyone),
    SD_BUS_METHOD_WITH_ARGS("StartNode", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT,
                            (node_method<&NodeControl::start_node, action_manage_node>), anyone),
    SD_BUS_METHOD_WITH_ARGS("Reload", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT,
                            (node_method<&NodeControl::reload, action_reload>), anyone),
    SD_BUS_METHOD_WITH_ARGS("ListNodes", SD_BUS_NO_ARGS, SD_BUS_RESULT(list_nodes_signature, nodes), list_nodes,
                            anyone),
    SD_BUS_METHOD_WITH_ARGS("AssignRanks", SD_BUS_ARGS("s", node, "u", start_rank, "u", count), SD_BUS_NO_RESULT,
                            assign_ranks, anyone),
};

}  // namespace

std::span<const Property<ManagerSnapshot>> ManagerBus::properties() { return manager_properties; }
std::span<const sd_bus_vtable> ManagerBus::methods() { return manager_methods; }

const ManagerSnapshot& ManagerBus::snapshot_of(void* userdata) {
    auto& self = *static_cast<ManagerBus*>(userdata);
    self.current_ = manager_snapshot(self.node_);
    return self.current_;
}

}  // namespace dpengine::bus
