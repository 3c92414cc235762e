// dpctl nodes (the cluster's nodes, open to everyone) and dpctl assign NODE --start-rank R
// --count N (root or group dpengine): AssignRanks on the head, then, unless --no-block, a wait
// until the moved ranks are ready on NODE.
#include "bus/api.hpp"
#include "bus_client.hpp"
#include "json.hpp"
#include "table.hpp"
#include "verbs.hpp"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <thread>

namespace dpctl {

namespace {

using Clock = std::chrono::steady_clock;

// "2026-11-27 07:55:07 UTC", or "" for 0.
std::string format_since(uint64_t unix_seconds) {
    if (unix_seconds == 0) return "";
    std::time_t t = static_cast<std::time_t>(unix_seconds);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[40];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
    return buf;
}

const char* node_state_colour(const std::string& state) {
    if (state == "connected" || state == "local") return colour::green;
    if (state == "lost" || state == "disconnected") return colour::red;
    return colour::none;
}

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
        if (a.size() > 1 && a[0] == '-') throw Failure(exit_status::invalid_arguments, "assign: unknown option '" + a + "'" + usage);
        if (!out.node.empty()) throw Failure(exit_status::invalid_arguments, "assign takes one NODE (got '" + out.node + "' and '" + a + "')" + usage);
        out.node = a;
    next:;
    }
    if (out.node.empty()) throw Failure(exit_status::invalid_arguments, "assign needs a NODE" + usage);
    if (!out.start) throw Failure(exit_status::invalid_arguments, "assign needs --start-rank" + usage);
    if (!out.count) throw Failure(exit_status::invalid_arguments, "assign needs --count" + usage);
    return out;
}

}  // namespace

void print_nodes_table(const std::vector<NodeRow>& nodes, const Options& options, bool colour) {
    using Align = Table::Align;
    Table table({{"NODE"}, {"ROLE"}, {"STATE"}, {"RANKS"}, {"WANTED", Align::right}, {"ADDRESS"}, {"SINCE"}});
    for (const auto& n : nodes) {
        table.add_row({{n.name},
                       {n.role},
                       {n.state, node_state_colour(n.state)},
                       {rank_block(n.start_rank, n.count)},
                       {n.role == "head" && n.wanted == 0 ? "" : std::to_string(n.wanted)},
                       {n.address},
                       {format_since(n.since)}});
    }
    table.print(stdout, options.legend, colour);
    if (options.legend) std::printf("\n%zu node%s listed.\n", nodes.size(), nodes.size() == 1 ? "" : "s");
}

int nodes_verb(const Options& options, const Args& args) {
    if (!args.empty()) {
        throw Failure(exit_status::invalid_arguments, "nodes takes no arguments (got '" + args[0] + "'); see 'dpctl --help'");
    }
    auto bus = BusClient::connect();
    auto nodes = bus.nodes();
    if (options.json) {
        std::printf("%s\n", nodes_json(nodes).c_str());
    } else {
        print_nodes_table(nodes, options, use_colour());
    }
    return exit_status::ok;
}

int assign_verb(const Options& options, const Args& args) {
    const AssignArgs a = parse_assign(args);
    const std::string what = "assigning ranks " + rank_block(a.start.value(), a.count.value()) + " to node '" + a.node + "'";
    auto bus = BusClient::connect();
    bus.assign(a.node, *a.start, *a.count, what);
    if (!options.block) return exit_status::ok;
    // Done when every rank of the block is ready and registered from the node.
    const auto deadline = Clock::now() + std::chrono::duration<double>(options.timeout_s);
    for (;;) {
        std::string pending;
        for (const auto& r : bus.ranks()) {
            if (r.rank < *a.start || r.rank >= *a.start + *a.count) continue;
            if (r.state == "ready" && r.node == a.node) continue;
            if (r.state == "failed" && r.node == a.node) {
                throw Failure(exit_status::failure, what + " failed: rank " + std::to_string(r.rank) + " failed on node '" +
                                                        a.node + "'" + (r.last_error.empty() ? "" : ": " + r.last_error));
            }
            pending += (pending.empty() ? "" : "; ") + ("rank " + std::to_string(r.rank) + " is " + r.state +
                                                       (r.node.empty() ? "" : " on node '" + r.node + "'"));
        }
        if (pending.empty()) return exit_status::ok;
        if (Clock::now() >= deadline) {
            throw Failure(exit_status::failure, what + " did not complete within " +
                                                    std::to_string(std::lround(options.timeout_s)) + " s (" + pending +
                                                    "); the daemon goes on in the background: see 'dpctl status'");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
}

}  // namespace dpctl
