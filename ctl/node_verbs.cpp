// dpctl nodes (the cluster's nodes, open to everyone) and dpctl assign NODE --start-rank R
// --count N (root or group dpengine): AssignRanks on the head, then, unless --no-block, a wait
// until the moved ranks are ready on NODE.
#include "bus_client.hpp"
#include "json.hpp"
#include "rows.hpp"
#include "table.hpp"
#include "verb_table.hpp"
#include "wait.hpp"

#include <cstdio>

namespace dpctl {

namespace {

// An assign option's number (exit 2 otherwise, before any bus call).
uint32_t parse_number(const std::string& option, const std::string& text) {
    auto value = parse_uint32(text);
    if (!value) throw Failure(exit_status::invalid_arguments, "assign: " + option + ": '" + text + "' is not a number");
    return *value;
}

struct AssignArgs {
    std::string node;
    std::optional<uint32_t> start, count;
};

AssignArgs parse_assign(const Args& args) {
    const std::string usage = "; usage: dpctl assign NODE --start-rank R --count N";
    AssignArgs out;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        for (const char* name : {"--start-rank", "--count"}) {
            const std::string n = name;
            if (a != n && a.rfind(n + "=", 0) != 0) continue;
            std::string value;
            if (a.size() > n.size()) {
                value = a.substr(n.size() + 1);
            } else if (i + 1 < args.size()) {
                value = args[++i];
            } else {
                throw Failure(exit_status::invalid_arguments, "assign: " + n + " needs a value" + usage);
            }
            (n == "--count" ? out.count : out.start) = parse_number(n, value);
            goto next;
        }
        if (a.size() > 1 && a[0] == '-')
            throw Failure(exit_status::invalid_arguments, "assign: unknown option '" + a + "'" + usage);
        if (!out.node.empty())
            throw Failure(exit_status::invalid_arguments,
                          "assign takes one NODE (got '" + out.node + "' and '" + a + "')" + usage);
        out.node = a;
    next:;
    }
    if (out.node.empty()) throw Failure(exit_status::invalid_arguments, "assign needs a NODE" + usage);
    if (!out.start) throw Failure(exit_status::invalid_arguments, "assign needs --start-rank" + usage);
    if (!out.count) throw Failure(exit_status::invalid_arguments, "assign needs --count" + usage);
    return out;
}

}  // namespace

int nodes_verb(Invocation& in) {
    auto nodes = in.bus().nodes();
    if (in.options.json) {
        std::printf("%s\n", nodes_json(nodes).c_str());
    } else {
        print_nodes_table(nodes, in.options, use_colour());
    }
    return exit_status::ok;
}

int assign_verb(Invocation& in) {
    const AssignArgs a = parse_assign(in.args);
    const std::string what =
        "assigning ranks " + rank_block(a.start.value(), a.count.value()) + " to node '" + a.node + "'";
    BusClient& bus = in.bus();
    bus.assign(a.node, *a.start, *a.count, what);
    if (!in.options.block) return exit_status::ok;
    // Done when every rank of the block is ready and registered from the node.
    std::vector<uint32_t> block;
    for (uint64_t rank = *a.start; rank < uint64_t{*a.start} + *a.count; ++rank)
        block.push_back(static_cast<uint32_t>(rank));
    wait_for(bus, in.options, {what, block, std::nullopt}, [&](const std::vector<RankRow>& ranks) -> Progress {
        std::string pending;
        for (const auto& r : ranks) {
            if (r.rank < *a.start || r.rank - *a.start >= *a.count) continue;
            if (r.state == "ready" && r.node == a.node) continue;
            if (r.state == "failed" && r.node == a.node) {
                return {Progress::failed,
                        "rank " + std::to_string(r.rank) + " failed on node '" + a.node + "'" +
                            (r.last_error.empty() ? "" : ": " + r.last_error)};
            }
            pending += (pending.empty() ? "" : "; ") +
                ("rank " + std::to_string(r.rank) + " is " + r.state +
                 (r.node.empty() ? "" : " on node '" + r.node + "'"));
        }
        return {pending.empty() ? Progress::done : Progress::waiting, pending};
    });
    return exit_status::ok;
}

}  // namespace dpctl
