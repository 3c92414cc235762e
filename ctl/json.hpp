// dpctl --json: one JSON document per command, with stable field names (dpctl(1)).
//   ranks:  the rank fields of rows.cpp, an array of objects
//   nodes:  the node fields of rows.cpp, an array of objects ("ranks": "A-B", "A" or "" for none)
//   status: the node's facts of rows.cpp ("role", "node", "dp_size", "epoch", "ready_ranks",
//           "version"), then "ranks": [...] and "nodes": [...]
// Numbers are numbers (pid 0: no process), text is text ("" when empty), and the group and
// activity fields of a rank are null where the daemon does not know them.
#pragma once

#include "bus_client.hpp"

#include <string>
#include <vector>

namespace dpctl {

std::string ranks_json(const std::vector<RankRow>& ranks);
struct NodeFacts;
std::string status_json(const NodeFacts& facts, const std::vector<RankRow>& ranks, const std::vector<NodeRow>& nodes);
std::string nodes_json(const std::vector<NodeRow>& nodes);

}  // namespace dpctl
