#include "rows.hpp"

#include "fields.hpp"

#include <cstdio>
#include <iterator>
#include <string>

namespace dpctl {

namespace json = boost::json;

namespace {

using Align = Table::Align;

// ---- ranks ----

// The group and activity fields: null (the table's "-") where the daemon does not know them
// (a headless node: ask the head).
json::value known(const RankRow& r, json::value v) { return r.activity_known ? v : json::value(nullptr); }

// Epoch, wave and dummy share mean something only for a rank in a DP group.
bool grouped(const RankRow& r) { return r.activity_known && r.group_kind != "none"; }

std::string error_cell(const RankRow& r) {
    if (r.reason.empty()) return r.last_error;
    if (r.last_error.empty()) return r.reason;
    return r.reason + ": " + r.last_error;
}

std::string formatted(const char* format, double value) {
    char buf[32];
    std::snprintf(buf, sizeof buf, format, value);
    return buf;
}

// Bytes as systemd prints sizes (1024-based, one decimal: "1.5G"); 0 (not measured) is empty.
std::string bytes_cell(uint64_t bytes) {
    if (bytes == 0) return "";
    static constexpr const char* units[] = {"B", "K", "M", "G", "T", "P"};
    double value = static_cast<double>(bytes);
    size_t unit = 0;
    while (value >= 1024 && unit + 1 < std::size(units)) {
        value /= 1024;
        ++unit;
    }
    if (unit == 0) return std::to_string(bytes) + "B";
    return formatted("%.1f", value) + units[unit];
}

const Field<RankRow> rank_fields[] = {
    {"RANK", "rank", Align::right, [](const RankRow& r) -> json::value { return r.rank; }},
    {"STATE", "state", Align::left, [](const RankRow& r) -> json::value { return json::string(r.state); },
     [](const RankRow& r) {
         return Table::Cell{r.state, state_colour(r.state)};
     }},
    {"NODE", "node", Align::left, [](const RankRow& r) -> json::value { return json::string(r.node); }},
    {"DEVICE", "device", Align::left, [](const RankRow& r) -> json::value { return json::string(r.device); }},
    {"PID", "pid", Align::right, [](const RankRow& r) -> json::value { return r.pid; },  // 0: no process
     [](const RankRow& r) { return Table::Cell{r.pid ? std::to_string(r.pid) : ""}; }},
    {"INFLIGHT", "in_flight", Align::right, [](const RankRow& r) -> json::value { return r.in_flight; }},
    {"QUEUED", "queued", Align::right, [](const RankRow& r) -> json::value { return r.queued; }},
    {"SERVED", "served", Align::right, [](const RankRow& r) -> json::value { return r.served; }},
    {"RESTARTS", "restarts", Align::right, [](const RankRow& r) -> json::value { return r.restarts; }},
    {nullptr, "last_error", Align::left, [](const RankRow& r) -> json::value { return json::string(r.last_error); }},
    {nullptr, "reason", Align::left, [](const RankRow& r) -> json::value { return json::string(r.reason); }},
    {"GROUP", "group_kind", Align::left, [](const RankRow& r) { return known(r, json::string(r.group_kind)); }},
    {"EPOCH", "group_epoch", Align::right, [](const RankRow& r) { return known(r, r.group_epoch); },
     [](const RankRow& r) { return Table::Cell{grouped(r) ? std::to_string(r.group_epoch) : ""}; }},
    {"WAVE", "wave", Align::right, [](const RankRow& r) { return known(r, r.wave); },
     [](const RankRow& r) { return Table::Cell{grouped(r) ? std::to_string(r.wave) : ""}; }},
    {"STEPS/S", "steps_per_second", Align::right, [](const RankRow& r) { return known(r, r.steps_per_second); },
     [](const RankRow& r) { return Table::Cell{r.activity_known ? formatted("%.1f", r.steps_per_second) : ""}; }},
    {"DUMMY", "dummy_step_share", Align::right, [](const RankRow& r) { return known(r, r.dummy_step_share); },
     [](const RankRow& r) { return Table::Cell{grouped(r) ? formatted("%.0f%%", r.dummy_step_share * 100) : ""}; }},
    {"MEM", "memory_used", Align::right, [](const RankRow& r) { return known(r, r.memory_used); },
     [](const RankRow& r) { return Table::Cell{r.activity_known ? bytes_cell(r.memory_used) : ""}; }},
    {"ERROR", nullptr, Align::left, nullptr,
     [](const RankRow& r) {
         std::string error = error_cell(r);
         const char* c = error.empty() ? colour::none : colour::red;
         return Table::Cell{std::move(error), c};
     }},
};

// ---- nodes ----

const char* node_state_colour(const std::string& state) {
    if (state == "connected" || state == "local") return colour::green;
    if (state == "lost" || state == "disconnected") return colour::red;
    return colour::none;
}

const Field<NodeRow> node_fields[] = {
    {"NODE", "name", Align::left, [](const NodeRow& n) -> json::value { return json::string(n.name); }},
    {"ROLE", "role", Align::left, [](const NodeRow& n) -> json::value { return json::string(n.role); }},
    {"STATE", "state", Align::left, [](const NodeRow& n) -> json::value { return json::string(n.state); },
     [](const NodeRow& n) {
         return Table::Cell{n.state, node_state_colour(n.state)};
     }},
    {nullptr, "start_rank", Align::left, [](const NodeRow& n) -> json::value { return n.start_rank; }},
    {nullptr, "count", Align::left, [](const NodeRow& n) -> json::value { return n.count; }},
    {"RANKS", "ranks", Align::left,
     [](const NodeRow& n) -> json::value { return json::string(rank_block(n.start_rank, n.count)); }},
    {"WANTED", "wanted", Align::right, [](const NodeRow& n) -> json::value { return n.wanted; },
     [](const NodeRow& n) { return Table::Cell{n.role == "head" && n.wanted == 0 ? "" : std::to_string(n.wanted)}; }},
    {"ADDRESS", "address", Align::left, [](const NodeRow& n) -> json::value { return json::string(n.address); }},
    {"SINCE", "since", Align::left, [](const NodeRow& n) -> json::value { return n.since; },  // Unix seconds
     [](const NodeRow& n) { return Table::Cell{utc_time(n.since)}; }},
    {nullptr, "incarnation", Align::left, [](const NodeRow& n) -> json::value { return n.incarnation; }},
};

// ---- the node's facts ----

const char* ready_colour(const NodeFacts& f) {
    if (f.manager.ready_ranks == f.ranks_counted) return colour::green;
    return f.manager.ready_ranks == 0 ? colour::red : colour::yellow;
}

const Field<NodeFacts> fact_fields[] = {
    {"Role", "role", Align::left, [](const NodeFacts& f) -> json::value { return json::string(f.manager.role); }},
    {"Node", "node", Align::left, [](const NodeFacts& f) -> json::value { return json::string(f.manager.node); }},
    {"DP size", "dp_size", Align::left, [](const NodeFacts& f) -> json::value { return f.manager.dp_size; }},
    {"Epoch", "epoch", Align::left, [](const NodeFacts& f) -> json::value { return f.manager.epoch; }},
    {"Ready ranks", "ready_ranks", Align::left, [](const NodeFacts& f) -> json::value { return f.manager.ready_ranks; },
     [](const NodeFacts& f) {
         const bool headless = f.manager.role == "headless";
         return Table::Cell{std::to_string(f.manager.ready_ranks) + "/" + std::to_string(f.ranks_counted) +
                                (headless ? " on this node" : ""),
                            ready_colour(f)};
     }},
    {"Version", "version", Align::left,
     [](const NodeFacts& f) -> json::value { return json::string(f.manager.version); }},
};

}  // namespace

NodeFacts node_facts(const ManagerInfo& manager, const std::vector<RankRow>& ranks) {
    return {manager, manager.role == "headless" ? ranks.size() : manager.dp_size};
}

void print_fact(const char* label, const std::string& value, const char* colour) {
    std::printf("%11s: %s%s%s\n", label, colour ? colour : "", printable(value).c_str(), colour ? colour::reset : "");
}

void print_node_facts(const NodeFacts& facts, bool colour) {
    for (const auto& f : fact_fields) {
        Table::Cell cell = f.cell ? f.cell(facts) : Table::Cell{cell_text(f.value(facts))};
        print_fact(f.header, cell.text, colour ? cell.colour : colour::none);
    }
}

json::object node_facts_object(const NodeFacts& facts) {
    json::object out;
    for (const auto& f : fact_fields) out.emplace(f.key, f.value(facts));
    return out;
}

std::string rank_block(uint32_t start, uint32_t count) {
    if (count == 0) return "";
    if (count == 1) return std::to_string(start);
    return std::to_string(start) + "-" + std::to_string(uint64_t{start} + count - 1);
}

void print_ranks_table(const std::vector<RankRow>& ranks, const Options& options, bool colour) {
    print_list<RankRow>(rank_fields, ranks, "rank", options.legend, colour);
}

void print_nodes_table(const std::vector<NodeRow>& nodes, const Options& options, bool colour) {
    print_list<NodeRow>(node_fields, nodes, "node", options.legend, colour);
}

json::array ranks_array(const std::vector<RankRow>& ranks) { return json_array<RankRow>(rank_fields, ranks); }

json::array nodes_array(const std::vector<NodeRow>& nodes) { return json_array<NodeRow>(node_fields, nodes); }

}  // namespace dpctl
