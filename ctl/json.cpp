#include "json.hpp"

#include <boost/json.hpp>

namespace dpctl {

namespace json = boost::json;

namespace {

json::value known(const RankRow& r, json::value v) { return r.activity_known ? v : json::value(nullptr); }

json::array ranks_array(const std::vector<RankRow>& ranks) {
    json::array out;
    out.reserve(ranks.size());
    for (const auto& r : ranks) {
        out.push_back(json::object{
            {"rank", r.rank},
            {"state", r.state},
            {"node", r.node},
            {"device", r.device},
            {"pid", r.pid},
            {"in_flight", r.in_flight},
            {"queued", r.queued},
            {"served", r.served},
            {"restarts", r.restarts},
            {"last_error", r.last_error},
            {"reason", r.reason},
            // null where the daemon does not know (a headless node: ask the head).
            {"group_kind", known(r, json::value(r.group_kind))},
            {"group_epoch", known(r, json::value(r.group_epoch))},
            {"wave", known(r, json::value(r.wave))},
            {"steps_per_second", known(r, json::value(r.steps_per_second))},
            {"dummy_step_share", known(r, json::value(r.dummy_step_share))},
            {"memory_used", known(r, json::value(r.memory_used))},
        });
    }
    return out;
}

json::array nodes_array(const std::vector<NodeRow>& nodes) {
    json::array out;
    out.reserve(nodes.size());
    for (const auto& n : nodes) {
        out.push_back(json::object{
            {"name", n.name},
            {"role", n.role},
            {"state", n.state},
            {"address", n.address},
            {"start_rank", n.start_rank},
            {"count", n.count},
            {"ranks", rank_block(n.start_rank, n.count)},
            {"wanted", n.wanted},
            {"since", n.since},
            {"incarnation", n.incarnation},
        });
    }
    return out;
}

}  // namespace

std::string rank_block(uint32_t start, uint32_t count) {
    if (count == 0) return "";
    if (count == 1) return std::to_string(start);
    return std::to_string(start) + "-" + std::to_string(uint64_t{start} + count - 1);
}

std::string nodes_json(const std::vector<NodeRow>& nodes) { return json::serialize(nodes_array(nodes)); }

std::string ranks_json(const std::vector<RankRow>& ranks) { return json::serialize(ranks_array(ranks)); }

std::string status_json(const ManagerInfo& m, const std::vector<RankRow>& ranks, const std::vector<NodeRow>& nodes) {
    return json::serialize(json::object{
        {"role", m.role},
        {"node", m.node},
        {"dp_size", m.dp_size},
        {"epoch", m.epoch},
        {"ready_ranks", m.ready_ranks},
        {"version", m.version},
        {"ranks", ranks_array(ranks)},
        {"nodes", nodes_array(nodes)},
    });
}

}  // namespace dpctl
