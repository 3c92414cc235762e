#include "json.hpp"

#include <boost/json.hpp>

namespace dpctl {

namespace json = boost::json;

namespace {

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
        });
    }
    return out;
}

}  // namespace

std::string ranks_json(const std::vector<RankRow>& ranks) { return json::serialize(ranks_array(ranks)); }

std::string status_json(const ManagerInfo& m, const std::vector<RankRow>& ranks) {
    return json::serialize(json::object{
        {"role", m.role},
        {"node", m.node},
        {"dp_size", m.dp_size},
        {"epoch", m.epoch},
        {"ready_ranks", m.ready_ranks},
        {"version", m.version},
        {"ranks", ranks_array(ranks)},
    });
}

}  // namespace dpctl
