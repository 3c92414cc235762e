// What dpctl prints, each from one list of fields (fields.hpp): the ranks and the nodes as a
// table ('dpctl ranks', 'dpctl nodes', and both in 'dpctl status') or as JSON (json.hpp), and
// the node's facts at the top of 'dpctl status' as "Label: value" lines or as JSON.
#pragma once

#include "bus_client.hpp"
#include "verbs.hpp"

#include <boost/json.hpp>

#include <vector>

namespace dpctl {

void print_ranks_table(const std::vector<RankRow>& ranks, const Options& options, bool colour);
void print_nodes_table(const std::vector<NodeRow>& nodes, const Options& options, bool colour);
boost::json::array ranks_array(const std::vector<RankRow>& ranks);
boost::json::array nodes_array(const std::vector<NodeRow>& nodes);

// The Manager's properties, and how many ranks "Ready ranks" counts against (a headless node
// knows, and counts, only its own).
struct NodeFacts {
    ManagerInfo manager;
    size_t ranks_counted = 0;
};
NodeFacts node_facts(const ManagerInfo& manager, const std::vector<RankRow>& ranks);
void print_node_facts(const NodeFacts& facts, bool colour);
boost::json::object node_facts_object(const NodeFacts& facts);
// One "Label: value" line as print_node_facts() prints them.
void print_fact(const char* label, const std::string& value, const char* colour);

// "A-B", "A", or "" when count is 0.
std::string rank_block(uint32_t start, uint32_t count);

}  // namespace dpctl
