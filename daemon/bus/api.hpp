// The org.dpengine1 D-Bus interface: the names the daemon exports and dpctl calls. Shared by
// both so they cannot drift; the man page org.dpengine1(5) is checked against the XML the
// daemon prints with --bus-introspect.
#pragma once

#include <cstdint>
#include <string>

namespace dpengine::bus {

inline constexpr const char* service = "org.dpengine1";
inline constexpr const char* manager_path = "/org/dpengine1";
inline constexpr const char* rank_path_prefix = "/org/dpengine1/rank";  // + "/N"
inline constexpr const char* manager_interface = "org.dpengine1.Manager";
inline constexpr const char* rank_interface = "org.dpengine1.Rank";
inline constexpr const char* node_path_prefix = "/org/dpengine1/node";  // + "/" + escaped name
inline constexpr const char* node_interface = "org.dpengine1.Node";

// Manager methods. Ranks are global DP ranks.
//   ListRanks() -> a(usssuuuttss)  rank, state, node, device, pid, in_flight, queued,
//                                  served, restarts, last_error, reason
//   StartRank(u) StopRank(u) RestartRank(u) DrainRank(u) UndrainRank(u)
//   StopNode() StartNode()  — this node's ranks
//   Reload()                — re-read the configuration (as SIGHUP does)
inline constexpr const char* list_ranks = "ListRanks";
inline constexpr const char* start_rank = "StartRank";
inline constexpr const char* stop_rank = "StopRank";
inline constexpr const char* restart_rank = "RestartRank";
inline constexpr const char* drain_rank = "DrainRank";
inline constexpr const char* undrain_rank = "UndrainRank";
inline constexpr const char* stop_node = "StopNode";
inline constexpr const char* start_node = "StartNode";
inline constexpr const char* reload = "Reload";

inline constexpr const char* list_ranks_signature = "a(usssuuuttss)";

// Each rank's DP group and engine activity, the Rank objects' GroupKind ... DummyStepShare
// for every rank in one call:
//   ListRankActivity() -> a(ustttdd)  rank, group_kind, group_epoch, wave, memory_used,
//                                     steps_per_second, dummy_step_share
// group_kind is "none" without a DP group, and "" where this daemon does not know (a headless
// node before the head reported them over the node link).
inline constexpr const char* list_rank_activity = "ListRankActivity";
inline constexpr const char* list_rank_activity_signature = "a(ustttdd)";

// The cluster view.
//   ListNodes() -> a(ssssuuutt)  name, role, state, address, start_rank, count, wanted,
//                                since (Unix seconds), incarnation
//   AssignRanks(s node, u start_rank, u count)  — head: move ranks to a node (or to the head)
inline constexpr const char* list_nodes = "ListNodes";
inline constexpr const char* assign_ranks = "AssignRanks";
inline constexpr const char* list_nodes_signature = "a(ssssuuutt)";

// Errors (org.dpengine1.Error.<Name>): core/reason.hpp's table names the error each reason code
// answers with, and the exit status dpctl gives for it.

// org.dpengine1.Manager's properties, as the daemon serves them and dpctl reads them.
struct ManagerProperties {
    std::string role;
    std::string node;  // NodeName
    uint32_t dp_size = 0;
    uint64_t epoch = 0;
    uint32_t ready_ranks = 0;
    std::string version;
};

// The group whose members may change things (besides root).
inline constexpr const char* manage_group = "dpengine";

// polkit, asked about a group member's call while it runs; one action per kind of change
// (etc/polkit-1/org.dpengine1.policy).
inline constexpr const char* polkit_service = "org.freedesktop.PolicyKit1";
// polkitd's error for a question it does not take from this caller (e.g. from a caller that is
// neither root nor an owner of the action, about another user).
inline constexpr const char* polkit_error_not_authorized = "org.freedesktop.PolicyKit1.Error.NotAuthorized";
inline constexpr const char* action_manage_ranks = "org.dpengine1.manage-ranks";
inline constexpr const char* action_manage_node = "org.dpengine1.manage-node";
inline constexpr const char* action_reload = "org.dpengine1.reload";
inline constexpr const char* action_assign = "org.dpengine1.assign";

}  // namespace dpengine::bus
