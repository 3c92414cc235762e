#include "bus/bus_service.hpp"

#include "bus/api.hpp"
#include "core/log.hpp"

#include <boost/asio/post.hpp>

#include <grp.h>
#include <pwd.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <charconv>
#include <cstring>
#include <vector>

namespace dpengine {

namespace asio = boost::asio;

namespace {

NodeControl& node_of(void* userdata) { return *static_cast<NodeControl*>(userdata); }

// Who may change anything: root and the daemon's own user always; members of the dpengine
// group when polkit is not running, or when polkit grants the method's action (so an
// administrator can narrow what the group may do with polkit rules). Everyone else is refused.
// The bus policy says the same; this holds even on a bus without our policy file.
enum class Caller { privileged, member, other };

Result<Caller> classify_caller(sd_bus_message* m) {
    sd_bus_creds* creds = nullptr;
    int r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds);
    if (r < 0) return Error{"cannot tell who is calling: " + std::string(std::strerror(-r)), "denied"};
    std::unique_ptr<sd_bus_creds, decltype(&sd_bus_creds_unref)> owned(creds, &sd_bus_creds_unref);
    uid_t euid = 0;
    if (sd_bus_creds_get_euid(creds, &euid) < 0) return Error{"cannot tell who is calling", "denied"};
    if (euid == 0 || euid == ::geteuid()) return Caller::privileged;
    // The caller's groups from the user database, not from /proc (which the unit hides with
    // ProtectProc=invisible).
    const group* g = ::getgrnam(bus::manage_group);
    const passwd* pw = ::getpwuid(euid);
    if (g && pw) {
        std::vector<gid_t> groups(64);
        int n = static_cast<int>(groups.size());
        if (::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n) < 0) {
            groups.resize(n);
            ::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n);
        }
        groups.resize(std::max(n, 0));
        if (std::find(groups.begin(), groups.end(), g->gr_gid) != groups.end()) return Caller::member;
    }
    return Caller::other;
}

int reply_status(sd_bus_message* m, sd_bus_error* error, const Status& status) {
    if (status) return sd_bus_reply_method_return(m, "");
    const auto& e = status.error();
    // The table names each control answer's D-Bus error; a code that is none is a failure.
    std::string_view name = entry(e.reason()).bus_error;
    if (name.empty()) name = entry(Reason::failed).bus_error;
    return sd_bus_error_set(error, std::string(name).c_str(), e.message.c_str());
}

bool polkit_running(sd_bus* bus) {
    sd_bus_message* reply = nullptr;
    int r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "NameHasOwner", nullptr, &reply, "s", bus::polkit_service);
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> owned(reply, &sd_bus_message_unref);
    int has_owner = 0;
    return r >= 0 && sd_bus_message_read(reply, "b", &has_owner) >= 0 && has_owner;
}

// A changing method waiting for polkit's answer: the call to answer and the change to make.
struct PendingAuthorization {
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> call;
    std::string action;
    std::function<Status()> change;
};

// Why polkit would not answer us about another user's call, and the fix: polkitd answers a
// caller other than root only for actions that name it as their owner.
std::string not_an_owner_hint() {
    const passwd* pw = ::getpwuid(::geteuid());
    const std::string user = pw ? pw->pw_name : std::to_string(::geteuid());
    return "; dpengined runs as user '" + user + "', which polkit answers only if org.dpengine1.policy (in " +
           "/usr/share/polkit-1/actions) names it in the annotation org.freedesktop.policykit.owner (unix-user:" +
           user + ")";
}

int polkit_answered(sd_bus_message* answer, void* userdata, sd_bus_error*) {
    auto& pending = *static_cast<PendingAuthorization*>(userdata);
    sd_bus_message* call = pending.call.get();
    sd_bus_error error = SD_BUS_ERROR_NULL;
    std::unique_ptr<sd_bus_error, decltype(&sd_bus_error_free)> owned(&error, &sd_bus_error_free);
    int authorized = 0, challenge = 0;
    if (const sd_bus_error* e = sd_bus_message_get_error(answer)) {
        std::string why = e->message ? e->message : e->name;
        if (sd_bus_error_has_name(e, bus::polkit_error_not_authorized)) why += not_an_owner_hint();
        log::warning("D-Bus: polkit did not answer for {}: {}", pending.action, why);
        sd_bus_error_setf(&error, SD_BUS_ERROR_ACCESS_DENIED, "polkit could not authorize '%s': %s",
                          pending.action.c_str(), why.c_str());
    } else if (sd_bus_message_enter_container(answer, 'r', "bba{ss}") < 0 ||
               sd_bus_message_read(answer, "bb", &authorized, &challenge) < 0) {
        sd_bus_error_setf(&error, SD_BUS_ERROR_ACCESS_DENIED, "polkit's answer for '%s' was unreadable",
                          pending.action.c_str());
    } else if (!authorized) {
        sd_bus_error_setf(&error, challenge ? SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED : SD_BUS_ERROR_ACCESS_DENIED,
                          "polkit denied the action '%s'%s", pending.action.c_str(),
                          challenge ? " without authentication (retry interactively, e.g. with pkexec)" : "");
    } else {
        reply_status(call, &error, pending.change());
    }
    if (sd_bus_error_is_set(&error)) return sd_bus_reply_method_error(call, &error);
    return sd_bus_reply_method_return(call, "");
}

// Runs `change` for the caller of `m` if it may make it, and answers the call; for a member of
// the dpengine group while polkit runs, asks polkit about `action` first and answers later.
int authorize_then(sd_bus_message* m, const char* action, std::function<Status()> change, sd_bus_error* error) {
    auto caller = classify_caller(m);
    if (!caller) return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, caller.error().message.c_str());
    sd_bus* bus = sd_bus_message_get_bus(m);
    if (*caller == Caller::privileged || (*caller == Caller::member && !polkit_running(bus))) {
        return reply_status(m, error, change());
    }
    if (*caller == Caller::other) {
        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                 "changing dpengine needs root or membership of the group '%s'", bus::manage_group);
    }
    auto* pending = new PendingAuthorization{{sd_bus_message_ref(m), &sd_bus_message_unref}, action, std::move(change)};
    uint64_t flags = sd_bus_message_get_allow_interactive_authorization(m) > 0 ? 1 : 0;  // AllowUserInteraction
    sd_bus_slot* slot = nullptr;
    int r = sd_bus_call_method_async(bus, &slot, bus::polkit_service, "/org/freedesktop/PolicyKit1/Authority",
                                     "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization", polkit_answered,
                                     pending, "(sa{sv})sa{ss}us", "system-bus-name", 1, "name", "s",
                                     sd_bus_message_get_sender(m), action, 0, flags, "");
    if (r < 0) {
        delete pending;
        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED, "cannot ask polkit about '%s': %s", action,
                                 std::strerror(-r));
    }
    // The slot lives as long as the bus connection; it frees the pending call with it, answered
    // or not (a dropped connection drops the call too).
    sd_bus_slot_set_destroy_callback(slot, [](void* p) { delete static_cast<PendingAuthorization*>(p); });
    sd_bus_slot_set_floating(slot, 1);
    sd_bus_slot_unref(slot);
    return 1;
}

template <Status (NodeControl::*Action)(uint32_t)>
int rank_method(sd_bus_message* m, void* userdata, sd_bus_error* error) {
    uint32_t rank = 0;
    if (int r = sd_bus_message_read(m, "u", &rank); r < 0) return r;
    NodeControl& node = node_of(userdata);
    return authorize_then(m, bus::action_manage_ranks, [&node, rank] { return (node.*Action)(rank); }, error);
}

template <Status (NodeControl::*Action)(), const char* const& PolkitAction>
int node_method(sd_bus_message* m, void* userdata, sd_bus_error* error) {
    NodeControl& node = node_of(userdata);
    return authorize_then(m, PolkitAction, [&node] { return (node.*Action)(); }, error);
}

int append_rank(sd_bus_message* reply, const RankInfo& r) {
    return sd_bus_message_append(reply, "(usssuuuttss)", r.rank, to_string(r.state), r.node.c_str(), r.device.c_str(),
                                 r.pid, r.in_flight, r.waiting, r.served, r.restarts, r.last_error.c_str(),
                                 r.reason.c_str());
}

int list_ranks(sd_bus_message* m, void* userdata, sd_bus_error*) {
    sd_bus_message* reply = nullptr;
    int r = sd_bus_message_new_method_return(m, &reply);
    if (r < 0) return r;
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> owned(reply, &sd_bus_message_unref);
    if ((r = sd_bus_message_open_container(reply, 'a', "(usssuuuttss)")) < 0) return r;
    for (const auto& info : node_of(userdata).ranks()) {
        if ((r = append_rank(reply, info)) < 0) return r;
    }
    if ((r = sd_bus_message_close_container(reply)) < 0) return r;
    return sd_bus_send(nullptr, reply, nullptr);
}

// The group kind status shows: "none" without a DP group, "" where this daemon does not know.
std::string group_kind_of(const RankInfo& r) {
    if (!r.activity_known) return "";
    return r.group_kind.empty() ? "none" : r.group_kind;
}

int list_rank_activity(sd_bus_message* m, void* userdata, sd_bus_error*) {
    sd_bus_message* reply = nullptr;
    int r = sd_bus_message_new_method_return(m, &reply);
    if (r < 0) return r;
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> owned(reply, &sd_bus_message_unref);
    const std::string entry = std::string(bus::list_rank_activity_signature).substr(1);
    if ((r = sd_bus_message_open_container(reply, 'a', entry.c_str())) < 0) return r;
    for (const auto& info : node_of(userdata).ranks()) {
        r = sd_bus_message_append(reply, entry.c_str(), info.rank, group_kind_of(info).c_str(), info.group_epoch,
                                  info.wave, info.memory_used, info.steps_per_second, info.dummy_step_share);
        if (r < 0) return r;
    }
    if ((r = sd_bus_message_close_container(reply)) < 0) return r;
    return sd_bus_send(nullptr, reply, nullptr);
}

int list_nodes(sd_bus_message* m, void* userdata, sd_bus_error*) {
    sd_bus_message* reply = nullptr;
    int r = sd_bus_message_new_method_return(m, &reply);
    if (r < 0) return r;
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> owned(reply, &sd_bus_message_unref);
    const std::string entry = std::string(bus::list_nodes_signature).substr(1);
    if ((r = sd_bus_message_open_container(reply, 'a', entry.c_str())) < 0) return r;
    for (const auto& n : node_of(userdata).nodes()) {
        r = sd_bus_message_append(reply, entry.c_str(), n.name.c_str(), n.role.c_str(), n.state.c_str(),
                                  n.address.c_str(), n.start_rank, n.count, n.wanted, n.since, n.incarnation);
        if (r < 0) return r;
    }
    if ((r = sd_bus_message_close_container(reply)) < 0) return r;
    return sd_bus_send(nullptr, reply, nullptr);
}

int assign_ranks(sd_bus_message* m, void* userdata, sd_bus_error* error) {
    const char* node_name = nullptr;
    uint32_t start = 0, count = 0;
    if (int r = sd_bus_message_read(m, "suu", &node_name, &start, &count); r < 0) return r;
    NodeControl& node = node_of(userdata);
    return authorize_then(m, bus::action_assign,
                          [&node, name = std::string(node_name), start, count] {
                              return node.assign_ranks(name, start, count);
                          },
                          error);
}

// ---- manager properties ----

int get_role(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void* userdata, sd_bus_error*) {
    return sd_bus_message_append(reply, "s", node_of(userdata).role().c_str());
}
int get_node_name(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void* userdata, sd_bus_error*) {
    return sd_bus_message_append(reply, "s", node_of(userdata).node_name().c_str());
}
int get_dp_size(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void* userdata, sd_bus_error*) {
    return sd_bus_message_append(reply, "u", node_of(userdata).dp_size());
}
int get_epoch(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void* userdata, sd_bus_error*) {
    return sd_bus_message_append(reply, "t", node_of(userdata).epoch());
}
int get_ready_ranks(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void* userdata, sd_bus_error*) {
    return sd_bus_message_append(reply, "u", node_of(userdata).ready_ranks());
}
int get_version(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void*, sd_bus_error*) {
    return sd_bus_message_append(reply, "s", DPENGINE_VERSION);
}

const sd_bus_vtable manager_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("Role", "s", get_role, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("NodeName", "s", get_node_name, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("DPSize", "u", get_dp_size, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("Epoch", "t", get_epoch, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("ReadyRanks", "u", get_ready_ranks, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("Version", "s", get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_METHOD("ListRanks", "", bus::list_ranks_signature, list_ranks, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("ListRankActivity", "", bus::list_rank_activity_signature, list_rank_activity, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("StartRank", "u", "", rank_method<&NodeControl::start_rank>, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("StopRank", "u", "", rank_method<&NodeControl::stop_rank>, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("RestartRank", "u", "", rank_method<&NodeControl::restart_rank>, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("DrainRank", "u", "", rank_method<&NodeControl::drain_rank>, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("UndrainRank", "u", "", rank_method<&NodeControl::undrain_rank>, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("StopNode", "", "", (node_method<&NodeControl::stop_node, bus::action_manage_node>), SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("StartNode", "", "", (node_method<&NodeControl::start_node, bus::action_manage_node>), SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Reload", "", "", (node_method<&NodeControl::reload, bus::action_reload>), SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("ListNodes", "", bus::list_nodes_signature, list_nodes, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("AssignRanks", "suu", "", assign_ranks, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

// ---- rank objects: /org/dpengine1/rank/N ----

std::optional<uint32_t> rank_of_path(const char* path) {
    std::string_view p = path, prefix = bus::rank_path_prefix;
    if (p.size() <= prefix.size() + 1 || p.substr(0, prefix.size()) != prefix || p[prefix.size()] != '/') return std::nullopt;
    auto digits = p.substr(prefix.size() + 1);
    uint32_t rank = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), rank);
    if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
    return rank;
}

std::optional<RankInfo> rank_info(NodeControl& node, const char* path) {
    auto rank = rank_of_path(path);
    if (!rank) return std::nullopt;
    for (auto& info : node.ranks()) {
        if (info.rank == *rank) return info;
    }
    return std::nullopt;
}

// The object paths an enumerator returns, as the NULL-terminated array sd-bus takes over.
int path_list(const std::vector<std::string>& paths, char*** out) {
    char** list = static_cast<char**>(calloc(paths.size() + 1, sizeof(char*)));
    if (!list) return -ENOMEM;
    for (size_t i = 0; i < paths.size(); ++i) {
        if (!(list[i] = strdup(paths[i].c_str()))) {
            for (size_t j = 0; j < i; ++j) free(list[j]);
            free(list);
            return -ENOMEM;
        }
    }
    *out = list;
    return 1;
}

// A fallback vtable's object lookup: whether `path` names a rank (or node) that exists now.
template <auto Lookup>
int find_object(sd_bus*, const char* path, const char*, void* userdata, void** found, sd_bus_error*) {
    if (!Lookup(node_of(userdata), path)) return 0;
    *found = userdata;
    return 1;
}

int enumerate_ranks(sd_bus*, const char*, void* userdata, char*** paths, sd_bus_error*) {
    std::vector<std::string> list;
    for (const auto& info : node_of(userdata).ranks()) {
        list.push_back(std::string(bus::rank_path_prefix) + "/" + std::to_string(info.rank));
    }
    return path_list(list, paths);
}

int get_rank_property(sd_bus*, const char* path, const char*, const char* property, sd_bus_message* reply,
                      void* userdata, sd_bus_error* error) {
    auto info = rank_info(node_of(userdata), path);
    if (!info) return sd_bus_error_setf(error, SD_BUS_ERROR_UNKNOWN_OBJECT, "no rank at %s", path);
    std::string_view p = property;
    if (p == "Rank") return sd_bus_message_append(reply, "u", info->rank);
    if (p == "State") return sd_bus_message_append(reply, "s", to_string(info->state));
    if (p == "Node") return sd_bus_message_append(reply, "s", info->node.c_str());
    if (p == "Device") return sd_bus_message_append(reply, "s", info->device.c_str());
    if (p == "Pid") return sd_bus_message_append(reply, "u", info->pid);
    if (p == "InFlight") return sd_bus_message_append(reply, "u", info->in_flight);
    if (p == "Queued") return sd_bus_message_append(reply, "u", info->waiting);
    if (p == "Served") return sd_bus_message_append(reply, "t", info->served);
    if (p == "Restarts") return sd_bus_message_append(reply, "t", info->restarts);
    if (p == "LastError") return sd_bus_message_append(reply, "s", info->last_error.c_str());
    if (p == "GroupKind") return sd_bus_message_append(reply, "s", group_kind_of(*info).c_str());
    if (p == "GroupEpoch") return sd_bus_message_append(reply, "t", info->group_epoch);
    if (p == "Wave") return sd_bus_message_append(reply, "t", info->wave);
    if (p == "MemoryUsed") return sd_bus_message_append(reply, "t", info->memory_used);
    if (p == "StepsPerSecond") return sd_bus_message_append(reply, "d", info->steps_per_second);
    if (p == "DummyStepShare") return sd_bus_message_append(reply, "d", info->dummy_step_share);
    return sd_bus_message_append(reply, "s", info->reason.c_str());  // Reason
}

const sd_bus_vtable rank_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("Rank", "u", get_rank_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("State", "s", get_rank_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("Node", "s", get_rank_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("Device", "s", get_rank_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("Pid", "u", get_rank_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    // Counters change with every request: read them, no signal.
    SD_BUS_PROPERTY("InFlight", "u", get_rank_property, 0, 0),
    SD_BUS_PROPERTY("Queued", "u", get_rank_property, 0, 0),
    SD_BUS_PROPERTY("Served", "t", get_rank_property, 0, 0),
    SD_BUS_PROPERTY("Restarts", "t", get_rank_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("LastError", "s", get_rank_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    SD_BUS_PROPERTY("Reason", "s", get_rank_property, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
    // The DP group and the engine's activity: they change with every heartbeat; read them.
    SD_BUS_PROPERTY("GroupKind", "s", get_rank_property, 0, 0),
    SD_BUS_PROPERTY("GroupEpoch", "t", get_rank_property, 0, 0),
    SD_BUS_PROPERTY("Wave", "t", get_rank_property, 0, 0),
    SD_BUS_PROPERTY("MemoryUsed", "t", get_rank_property, 0, 0),
    SD_BUS_PROPERTY("StepsPerSecond", "d", get_rank_property, 0, 0),
    SD_BUS_PROPERTY("DummyStepShare", "d", get_rank_property, 0, 0),
    SD_BUS_VTABLE_END,
};

// ---- node objects: /org/dpengine1/node/NAME (the name escaped as sd_bus_path_encode does) ----

std::optional<NodeInfo> node_info(NodeControl& node, const char* path) {
    char* name = nullptr;
    if (sd_bus_path_decode(path, bus::node_path_prefix, &name) <= 0) return std::nullopt;
    std::unique_ptr<char, decltype(&free)> owned(name, &free);
    for (auto& info : node.nodes()) {
        if (info.name == name) return info;
    }
    return std::nullopt;
}

int enumerate_nodes(sd_bus*, const char*, void* userdata, char*** paths, sd_bus_error*) {
    std::vector<std::string> list;
    for (const auto& info : node_of(userdata).nodes()) {
        char* path = nullptr;
        if (sd_bus_path_encode(bus::node_path_prefix, info.name.c_str(), &path) < 0) return -ENOMEM;
        list.emplace_back(path);
        free(path);
    }
    return path_list(list, paths);
}

int get_node_property(sd_bus*, const char* path, const char*, const char* property, sd_bus_message* reply,
                      void* userdata, sd_bus_error* error) {
    auto info = node_info(node_of(userdata), path);
    if (!info) return sd_bus_error_setf(error, SD_BUS_ERROR_UNKNOWN_OBJECT, "no node at %s", path);
    std::string_view p = property;
    if (p == "Name") return sd_bus_message_append(reply, "s", info->name.c_str());
    if (p == "Role") return sd_bus_message_append(reply, "s", info->role.c_str());
    if (p == "State") return sd_bus_message_append(reply, "s", info->state.c_str());
    if (p == "Address") return sd_bus_message_append(reply, "s", info->address.c_str());
    if (p == "StartRank") return sd_bus_message_append(reply, "u", info->start_rank);
    if (p == "Count") return sd_bus_message_append(reply, "u", info->count);
    if (p == "Wanted") return sd_bus_message_append(reply, "u", info->wanted);
    if (p == "Since") return sd_bus_message_append(reply, "t", info->since);
    return sd_bus_message_append(reply, "t", info->incarnation);  // Incarnation
}

// Node state changes are rare but not signalled per property: Manager's Epoch signals a change
// of placement; read the objects (or ListNodes) then.
const sd_bus_vtable node_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("Name", "s", get_node_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("Role", "s", get_node_property, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("State", "s", get_node_property, 0, 0),
    SD_BUS_PROPERTY("Address", "s", get_node_property, 0, 0),
    SD_BUS_PROPERTY("StartRank", "u", get_node_property, 0, 0),
    SD_BUS_PROPERTY("Count", "u", get_node_property, 0, 0),
    SD_BUS_PROPERTY("Wanted", "u", get_node_property, 0, 0),
    SD_BUS_PROPERTY("Since", "t", get_node_property, 0, 0),
    SD_BUS_PROPERTY("Incarnation", "t", get_node_property, 0, 0),
    SD_BUS_VTABLE_END,
};

}  // namespace

const char* BusService::introspection_xml() {
    return R"xml(<node name="/org/dpengine1">
 <interface name="org.dpengine1.Manager">
  <property name="Role" type="s" access="read"/>
  <property name="NodeName" type="s" access="read"/>
  <property name="DPSize" type="u" access="read"/>
  <property name="Epoch" type="t" access="read"/>
  <property name="ReadyRanks" type="u" access="read"/>
  <property name="Version" type="s" access="read"/>
  <method name="ListRanks"><arg type="a(usssuuuttss)" direction="out"/></method>
  <method name="ListRankActivity"><arg type="a(ustttdd)" direction="out"/></method>
  <method name="StartRank"><arg type="u" direction="in"/></method>
  <method name="StopRank"><arg type="u" direction="in"/></method>
  <method name="RestartRank"><arg type="u" direction="in"/></method>
  <method name="DrainRank"><arg type="u" direction="in"/></method>
  <method name="UndrainRank"><arg type="u" direction="in"/></method>
  <method name="StopNode"/>
  <method name="StartNode"/>
  <method name="Reload"/>
  <method name="ListNodes"><arg type="a(ssssuuutt)" direction="out"/></method>
  <method name="AssignRanks"><arg type="s" direction="in"/><arg type="u" direction="in"/><arg type="u" direction="in"/></method>
 </interface>
 <interface name="org.dpengine1.Node">
  <property name="Name" type="s" access="read"/>
  <property name="Role" type="s" access="read"/>
  <property name="State" type="s" access="read"/>
  <property name="Address" type="s" access="read"/>
  <property name="StartRank" type="u" access="read"/>
  <property name="Count" type="u" access="read"/>
  <property name="Wanted" type="u" access="read"/>
  <property name="Since" type="t" access="read"/>
  <property name="Incarnation" type="t" access="read"/>
 </interface>
 <interface name="org.dpengine1.Rank">
  <property name="Rank" type="u" access="read"/>
  <property name="State" type="s" access="read"/>
  <property name="Node" type="s" access="read"/>
  <property name="Device" type="s" access="read"/>
  <property name="Pid" type="u" access="read"/>
  <property name="InFlight" type="u" access="read"/>
  <property name="Queued" type="u" access="read"/>
  <property name="Served" type="t" access="read"/>
  <property name="Restarts" type="t" access="read"/>
  <property name="LastError" type="s" access="read"/>
  <property name="Reason" type="s" access="read"/>
  <property name="GroupKind" type="s" access="read"/>
  <property name="GroupEpoch" type="t" access="read"/>
  <property name="Wave" type="t" access="read"/>
  <property name="MemoryUsed" type="t" access="read"/>
  <property name="StepsPerSecond" type="d" access="read"/>
  <property name="DummyStepShare" type="d" access="read"/>
 </interface>
</node>
)xml";
}

BusService::BusService(asio::io_context& io, NodeControl& node) : io_(io), node_(node), fd_(io), timer_(io) {}

BusService::~BusService() {
    if (fd_.is_open()) fd_.release();  // the fd belongs to sd-bus
}

void BusService::start() { connect(); }

void BusService::connect() {
    sd_bus* raw = nullptr;
    int r = sd_bus_open_system(&raw);
    std::unique_ptr<sd_bus, BusDeleter> bus(raw);
    std::vector<std::unique_ptr<sd_bus_slot, SlotDeleter>> slots;
    const char* step = "connect to the system bus";
    // Each export makes a slot that keeps it; the first failure stops the rest.
    auto add = [&](auto&& export_with_slot) {
        sd_bus_slot* slot = nullptr;
        if (r >= 0 && (r = export_with_slot(&slot)) >= 0) slots.emplace_back(slot);
    };
    if (r >= 0) step = "export the objects";
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_object_vtable(bus.get(), slot, bus::manager_path, bus::manager_interface, manager_vtable, &node_);
    });
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_fallback_vtable(bus.get(), slot, bus::rank_path_prefix, bus::rank_interface, rank_vtable,
                                          find_object<rank_info>, &node_);
    });
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_node_enumerator(bus.get(), slot, bus::rank_path_prefix, enumerate_ranks, &node_);
    });
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_fallback_vtable(bus.get(), slot, bus::node_path_prefix, bus::node_interface, node_vtable,
                                          find_object<node_info>, &node_);
    });
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_node_enumerator(bus.get(), slot, bus::node_path_prefix, enumerate_nodes, &node_);
    });
    if (r >= 0) {
        step = "own the name org.dpengine1 (is the bus policy file installed, and the daemon's user allowed?)";
        r = sd_bus_request_name(bus.get(), bus::service, 0);
    }
    if (r < 0) {
        if (!warned_) {
            log::warning("D-Bus: cannot {}: {}; serving without the bus, retrying in the background", step, std::strerror(-r));
            warned_ = true;
        }
        schedule_reconnect();
        return;  // the slots go before the bus
    }
    slots_ = std::move(slots);
    bus_ = std::move(bus);
    fd_.assign(sd_bus_get_fd(bus_.get()));
    log::info("D-Bus: serving {} on the system bus", bus::service);
    warned_ = false;
    process();
}

void BusService::schedule_reconnect() {
    timer_.expires_after(std::chrono::seconds(2));
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) connect();
    });
}

void BusService::disconnected(int error) {
    log::warning("D-Bus: connection lost ({}); reconnecting in the background", std::strerror(-error));
    ++generation_;
    fd_.cancel();
    fd_.release();
    slots_.clear();
    bus_.reset();
    warned_ = true;
    schedule_reconnect();
}

void BusService::process() {
    for (int i = 0; i < 256; ++i) {
        int r = sd_bus_process(bus_.get(), nullptr);
        if (r < 0) return disconnected(r);
        if (r == 0) break;
    }
    arm();
}

// sd-bus says what it waits for (readable, writable, a deadline); asio waits for exactly that.
void BusService::arm() {
    uint64_t gen = ++generation_;
    fd_.cancel();
    timer_.cancel();
    int events = sd_bus_get_events(bus_.get());
    if (events < 0) return disconnected(events);
    auto on_ready = [this, gen](const boost::system::error_code& ec) {
        if (!ec && gen == generation_) process();
    };
    if (events & POLLIN) fd_.async_wait(asio::posix::stream_descriptor::wait_read, on_ready);
    if (events & POLLOUT) fd_.async_wait(asio::posix::stream_descriptor::wait_write, on_ready);
    uint64_t deadline_usec = 0;
    if (sd_bus_get_timeout(bus_.get(), &deadline_usec) >= 0 && deadline_usec != UINT64_MAX) {
        timespec now {};
        clock_gettime(CLOCK_MONOTONIC, &now);
        uint64_t now_usec = uint64_t(now.tv_sec) * 1000000 + uint64_t(now.tv_nsec) / 1000;
        timer_.expires_after(std::chrono::microseconds(deadline_usec > now_usec ? deadline_usec - now_usec : 0));
        timer_.async_wait(on_ready);
    }
}

void BusService::rank_changed(uint32_t rank) {
    if (!bus_) return;
    std::string path = std::string(bus::rank_path_prefix) + "/" + std::to_string(rank);
    sd_bus_emit_properties_changed(bus_.get(), path.c_str(), bus::rank_interface, "State", "Node", "Device", "Pid",
                                   "Restarts", "LastError", "Reason", nullptr);
    sd_bus_emit_properties_changed(bus_.get(), bus::manager_path, bus::manager_interface, "ReadyRanks", nullptr);
    // Emitting queues messages: let the loop write them.
    asio::post(io_, [this] {
        if (bus_) process();
    });
}

void BusService::nodes_changed() {
    if (!bus_) return;
    sd_bus_emit_properties_changed(bus_.get(), bus::manager_path, bus::manager_interface, "Epoch", nullptr);
    asio::post(io_, [this] {
        if (bus_) process();
    });
}

}  // namespace dpengine
