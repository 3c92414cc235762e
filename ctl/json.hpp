// dpctl --json: one JSON document per command, with stable field names (dpctl(1)).
//   ranks:  [{"rank", "state", "node", "device", "pid", "in_flight", "queued", "served",
//             "restarts", "last_error", "reason"}, ...]
//   nodes:  [{"name", "role", "state", "address", "start_rank", "count", "ranks", "wanted",
//             "since", "incarnation"}, ...]   ("ranks": "A-B", "A" or "" for none)
//   status: {"role", "node", "dp_size", "epoch", "ready_ranks", "version", "ranks": [...],
//            "nodes": [...]}
// Numbers are numbers (pid 0: no process), text is text ("" when empty).
#pragma once

#include "bus_client.hpp"

#include <string>
#include <vector>

namespace dpctl {

std::string ranks_json(const std::vector<RankRow>& ranks);
std::string status_json(const ManagerInfo& manager, const std::vector<RankRow>& ranks,
                        const std::vector<NodeRow>& nodes = {});
std::string nodes_json(const std::vector<NodeRow>& nodes);
// "A-B", "A", or "" when count is 0.
std::string rank_block(uint32_t start, uint32_t count);

}  // namespace dpctl
