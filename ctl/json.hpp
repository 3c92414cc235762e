// dpctl --json: one JSON document per command, with stable field names (dpctl(1)).
//   ranks:  [{"rank", "state", "node", "device", "pid", "in_flight", "queued", "served",
//             "restarts", "last_error", "reason"}, ...]
//   status: {"role", "node", "dp_size", "epoch", "ready_ranks", "version", "ranks": [...]}
// Numbers are numbers (pid 0: no process), text is text ("" when empty).
#pragma once

#include "bus_client.hpp"

#include <string>
#include <vector>

namespace dpctl {

std::string ranks_json(const std::vector<RankRow>& ranks);
std::string status_json(const ManagerInfo& manager, const std::vector<RankRow>& ranks);

}  // namespace dpctl
