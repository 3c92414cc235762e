#include "json.hpp"

#include "rows.hpp"

#include <boost/json.hpp>

namespace dpctl {

namespace json = boost::json;

std::string nodes_json(const std::vector<NodeRow>& nodes) { return json::serialize(nodes_array(nodes)); }

std::string ranks_json(const std::vector<RankRow>& ranks) { return json::serialize(ranks_array(ranks)); }

std::string status_json(const NodeFacts& facts, const std::vector<RankRow>& ranks, const std::vector<NodeRow>& nodes) {
    json::object status = node_facts_object(facts);
    status.emplace("ranks", ranks_array(ranks));
    status.emplace("nodes", nodes_array(nodes));
    return json::serialize(status);
}

}  // namespace dpctl
