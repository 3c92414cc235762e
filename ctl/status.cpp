// dpctl status (the default) and dpctl ranks: read-only, open to everyone. One GetAll, one
// ListRanks and one ListRankActivity call, so that status answers fast however many ranks
// there are.
#include "bus_client.hpp"
#include "json.hpp"
#include "table.hpp"
#include "verbs.hpp"

#include <cstdio>
#include <ctime>
#include <iterator>
#include <string>

namespace dpctl {

namespace {

void no_arguments(const char* verb, const Args& args) {
    if (!args.empty()) {
        throw Failure(exit_status::invalid_arguments,
                      std::string(verb) + " takes no arguments (got '" + args[0] + "'); see 'dpctl --help'");
    }
}

std::string error_cell(const RankRow& r) {
    if (r.reason.empty()) return r.last_error;
    if (r.last_error.empty()) return r.reason;
    return r.reason + ": " + r.last_error;
}

// Epoch, wave and dummy share mean something only for a rank in a DP group.
bool grouped(const RankRow& r) { return r.activity_known && r.group_kind != "none"; }

std::string steps_per_second_cell(double rate) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f", rate);
    return buf;
}

std::string percent_cell(double share) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.0f%%", share * 100);
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
    char buf[32];
    if (unit == 0) std::snprintf(buf, sizeof buf, "%lluB", static_cast<unsigned long long>(bytes));
    else std::snprintf(buf, sizeof buf, "%.1f%s", value, units[unit]);
    return buf;
}

void print_ranks_table(const std::vector<RankRow>& ranks, const Options& options, bool colour) {
    using Align = Table::Align;
    Table table({{"RANK", Align::right}, {"STATE"}, {"NODE"}, {"DEVICE"}, {"PID", Align::right},
                 {"INFLIGHT", Align::right}, {"QUEUED", Align::right}, {"SERVED", Align::right},
                 {"RESTARTS", Align::right}, {"GROUP"}, {"EPOCH", Align::right}, {"WAVE", Align::right},
                 {"STEPS/S", Align::right}, {"DUMMY", Align::right}, {"MEM", Align::right}, {"ERROR"}});
    for (const auto& r : ranks) {
        std::string error = error_cell(r);
        table.add_row({{std::to_string(r.rank)},
                       {r.state, state_colour(r.state)},
                       {r.node},
                       {r.device},
                       {r.pid ? std::to_string(r.pid) : ""},
                       {std::to_string(r.in_flight)},
                       {std::to_string(r.queued)},
                       {std::to_string(r.served)},
                       {std::to_string(r.restarts)},
                       {r.activity_known ? r.group_kind : ""},
                       {grouped(r) ? std::to_string(r.group_epoch) : ""},
                       {grouped(r) ? std::to_string(r.wave) : ""},
                       {r.activity_known ? steps_per_second_cell(r.steps_per_second) : ""},
                       {grouped(r) ? percent_cell(r.dummy_step_share) : ""},
                       {r.activity_known ? bytes_cell(r.memory_used) : ""},
                       {error, error.empty() ? colour::none : colour::red}});
    }
    table.print(stdout, options.legend, colour);
    if (options.legend) std::printf("\n%zu rank%s listed.\n", ranks.size(), ranks.size() == 1 ? "" : "s");
}

}  // namespace

int ranks_verb(const Options& options, const Args& args) {
    no_arguments("ranks", args);
    auto bus = BusClient::connect();
    auto ranks = bus.ranks();
    bus.add_activity(ranks);
    if (options.json) {
        std::printf("%s\n", ranks_json(ranks).c_str());
    } else {
        print_ranks_table(ranks, options, use_colour());
    }
    return exit_status::ok;
}

int status_verb(const Options& options, const Args& args) {
    no_arguments("status", args);
    auto bus = BusClient::connect();
    auto manager = bus.manager();
    auto ranks = bus.ranks();
    bus.add_activity(ranks);
    auto nodes = bus.nodes();
    if (options.json) {
        std::printf("%s\n", status_json(manager, ranks, nodes).c_str());
        return exit_status::ok;
    }
    const bool colour = use_colour();
    // A headless node knows (and counts) only its own ranks.
    const bool headless = manager.role == "headless";
    const size_t of = headless ? ranks.size() : manager.dp_size;
    const char* ready_colour = manager.ready_ranks == of ? colour::green
                               : manager.ready_ranks == 0 ? colour::red
                                                          : colour::yellow;
    auto field = [](const char* label, const std::string& value, const char* col) {
        std::printf("%11s: %s%s%s\n", label, col ? col : "", printable(value).c_str(), col ? colour::reset : "");
    };
    field("Role", manager.role, nullptr);
    field("Node", manager.node, nullptr);
    field("DP size", std::to_string(manager.dp_size), nullptr);
    field("Epoch", std::to_string(manager.epoch), nullptr);
    field("Ready ranks", std::to_string(manager.ready_ranks) + "/" + std::to_string(of) + (headless ? " on this node" : ""),
          colour ? ready_colour : nullptr);
    field("Version", manager.version, nullptr);
    // A headless node: its link to the head.
    for (const auto& n : nodes) {
        if (manager.role != "headless" || n.role != "head") continue;
        field("Head link", n.state + (n.state == "connected" ? " to " : " from ") + n.address +
                               (n.name.empty() ? "" : " (node " + n.name + ")"),
              colour ? (n.state == "connected" ? colour::green : colour::red) : nullptr);
        if (n.since) {
            std::time_t t = static_cast<std::time_t>(n.since);
            std::tm tm{};
            gmtime_r(&t, &tm);
            char buf[40];
            std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
            field("Since", buf, nullptr);
        }
    }
    std::printf("\n");
    if (manager.role == "head" && nodes.size() > 1) {
        print_nodes_table(nodes, options, colour);
        std::printf("\n");
    }
    print_ranks_table(ranks, options, colour);
    return exit_status::ok;
}

}  // namespace dpctl
