// dpctl status (the default) and dpctl ranks: read-only, open to everyone. One GetAll, one
// ListRanks and one ListRankActivity call, so that status answers fast however many ranks
// there are.
#include "bus_client.hpp"
#include "json.hpp"
#include "rows.hpp"
#include "table.hpp"
#include "verb_table.hpp"

#include <cstdio>
#include <string>

namespace dpctl {

int ranks_verb(Invocation& in) {
    const Options& options = in.options;
    BusClient& bus = in.bus();
    auto ranks = bus.ranks();
    bus.add_activity(ranks);
    if (options.json) {
        std::printf("%s\n", ranks_json(ranks).c_str());
    } else {
        print_ranks_table(ranks, options, use_colour());
    }
    return exit_status::ok;
}

int status_verb(Invocation& in) {
    const Options& options = in.options;
    BusClient& bus = in.bus();
    auto manager = bus.manager();
    auto ranks = bus.ranks();
    bus.add_activity(ranks);
    auto nodes = bus.nodes();
    const NodeFacts facts = node_facts(manager, ranks);
    if (options.json) {
        std::printf("%s\n", status_json(facts, ranks, nodes).c_str());
        return exit_status::ok;
    }
    const bool colour = use_colour();
    print_node_facts(facts, colour);
    // A headless node: its link to the head.
    for (const auto& n : nodes) {
        if (manager.role != "headless" || n.role != "head") continue;
        print_fact("Head link",
                   n.state + (n.state == "connected" ? " to " : " from ") + n.address +
                       (n.name.empty() ? "" : " (node " + n.name + ")"),
                   colour ? (n.state == "connected" ? colour::green : colour::red) : colour::none);
        if (n.since) print_fact("Since", utc_time(n.since), colour::none);
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
