// dpctl start|stop|restart|drain|undrain RANK and dpctl start-node|stop-node: one Manager
// method call each (root or group dpengine), then, unless --no-block, a wait until the daemon
// reports the outcome (wait.hpp): the methods only begin the change (a stop drains first).
#include "bus/api.hpp"
#include "bus_client.hpp"
#include "verb_table.hpp"
#include "wait.hpp"

#include <chrono>
#include <stdexcept>

namespace dpctl {

namespace api = dpengine::bus;

namespace {

const RankRow* find(const std::vector<RankRow>& ranks, uint32_t rank) {
    for (const auto& r : ranks) {
        if (r.rank == rank) return &r;
    }
    return nullptr;
}

std::string describe(const RankRow& r) {
    std::string s = "rank " + std::to_string(r.rank) + " is " + r.state;
    if (!r.last_error.empty()) s += " (" + (r.reason.empty() ? "" : r.reason + ": ") + r.last_error + ")";
    return s;
}

bool gone(const RankRow& r) { return r.pid == 0 && (r.state == "stopped" || r.state == "failed"); }

// Up after a start: ready, or draining (an operator's drain holds across restarts until undrain).
bool serving(const RankRow& r) { return r.state == "ready" || r.state == "draining"; }

Check started(uint32_t rank, bool head, std::optional<uint64_t> restarts_before) {
    return [=](const std::vector<RankRow>& ranks) -> Progress {
        const RankRow* r = find(ranks, rank);
        if (!r) return {Progress::failed, "rank " + std::to_string(rank) + " is no longer listed"};
        const bool new_process = !restarts_before || r->restarts > *restarts_before;
        if (!new_process) {
            if (r->pid == 0 && gone(*r)) return {Progress::failed, describe(*r) + " and was not started again"};
            return {Progress::waiting, describe(*r)};
        }
        if (!head) return {r->pid ? Progress::done : Progress::waiting, describe(*r)};
        if (serving(*r)) return {Progress::done, ""};
        if (r->state == "failed" || gone(*r)) return {Progress::failed, describe(*r)};
        return {Progress::waiting, describe(*r)};
    };
}

Check stopped(uint32_t rank, bool head) {
    return [=](const std::vector<RankRow>& ranks) -> Progress {
        const RankRow* r = find(ranks, rank);
        if (!r) return {Progress::done, ""};
        if (r->pid == 0 && (!head || gone(*r))) return {Progress::done, ""};
        return {Progress::waiting, describe(*r) + (r->pid ? ", pid " + std::to_string(r->pid) : "")};
    };
}

Check drained(uint32_t rank) {
    return [=](const std::vector<RankRow>& ranks) -> Progress {
        const RankRow* r = find(ranks, rank);
        if (!r) return {Progress::failed, "rank " + std::to_string(rank) + " is no longer listed"};
        if (r->state != "draining") return {Progress::failed, describe(*r) + " instead of draining"};
        if (r->in_flight == 0) return {Progress::done, ""};
        return {Progress::waiting, describe(*r) + " with " + std::to_string(r->in_flight) + " request(s) in flight"};
    };
}

// A drain is done when the rank has nothing in flight, and the daemon does not signal InFlight
// (it changes with every request): the wait also re-reads this often.
constexpr std::chrono::milliseconds in_flight_recheck{100};

struct RankAction {
    const char* verb;
    const char* method;
    const char* doing;  // for messages: "<doing> rank N"
};

constexpr RankAction rank_actions[] = {
    {"start", api::start_rank, "starting"},       {"stop", api::stop_rank, "stopping"},
    {"restart", api::restart_rank, "restarting"}, {"drain", api::drain_rank, "draining"},
    {"undrain", api::undrain_rank, "undraining"},
};

}  // namespace

std::optional<uint32_t> parse_uint32(const std::string& text) {
    uint64_t value = 0;
    bool ok = !text.empty() && text.size() <= 10;
    for (char c : text) {
        if (c < '0' || c > '9') ok = false;
        if (ok) value = value * 10 + uint64_t(c - '0');
    }
    if (!ok || value > UINT32_MAX) return std::nullopt;
    return static_cast<uint32_t>(value);
}

uint32_t parse_rank(const std::string& verb, const std::string& text) {
    auto rank = parse_uint32(text);
    if (!rank) {
        throw Failure(
            exit_status::invalid_arguments,
            verb + ": '" + text + "' is not a rank: give the rank's number (0 to DP size - 1, see 'dpctl ranks')");
    }
    return *rank;
}

int rank_action_verb(Invocation& in) {
    const std::string verb(in.verb.name);
    const RankAction* action = nullptr;
    for (const auto& a : rank_actions) {
        if (verb == a.verb) action = &a;
    }
    if (!action) throw std::logic_error("dpctl " + verb + " is in the verb table but not in rank_actions");
    const uint32_t rank = parse_rank(verb, in.args[0]);
    const std::string what = std::string(action->doing) + " rank " + std::to_string(rank);
    const Options& options = in.options;

    BusClient& bus = in.bus();
    // Before a restart: its count, to recognise the new process.
    std::optional<uint64_t> restarts_before;
    bool head = true;
    if (options.block && (verb == "start" || verb == "restart" || verb == "stop")) {
        head = bus.manager().role == "head";
        if (verb == "restart") {
            auto ranks = bus.ranks();
            if (const RankRow* r = find(ranks, rank)) restarts_before = r->restarts;
        }
    }
    bus.manage(action->method, rank, what);
    if (!options.block || verb == "undrain") return exit_status::ok;

    const Wait wait{what, {rank}, std::nullopt};
    if (verb == "start") wait_for(bus, options, wait, started(rank, head, std::nullopt));
    else if (verb == "restart") wait_for(bus, options, wait, started(rank, head, restarts_before));
    else if (verb == "stop") wait_for(bus, options, wait, stopped(rank, head));
    else if (verb == "drain") wait_for(bus, options, {what, {rank}, in_flight_recheck}, drained(rank));
    return exit_status::ok;
}

int node_action_verb(Invocation& in) {
    const bool start = in.verb.name == "start-node";
    const Options& options = in.options;
    BusClient& bus = in.bus();
    ManagerInfo manager;
    if (options.block) manager = bus.manager();
    const std::string what = std::string(start ? "starting" : "stopping") + " the ranks of this node";
    bus.manage(start ? api::start_node : api::stop_node, what);
    if (!options.block) return exit_status::ok;

    const bool head = manager.role == "head";
    // This node's ranks: those with a process here (only the node that runs a rank knows its
    // pid), and those that name this node. Which they are can change as they start: every
    // listed rank's signals wake the wait.
    auto local = [&](const RankRow& r) { return r.pid != 0 || r.node == manager.node; };
    std::vector<uint32_t> listed;
    for (const auto& r : bus.ranks()) listed.push_back(r.rank);
    wait_for(bus, options, {what, listed, std::nullopt}, [&](const std::vector<RankRow>& ranks) -> Progress {
        std::string pending, failed;
        for (const auto& r : ranks) {
            if (!local(r)) continue;
            bool settled = start ? (head ? serving(r) || r.state == "failed" || gone(r) : r.pid != 0) : r.pid == 0;
            if (!settled) pending += (pending.empty() ? "" : "; ") + describe(r);
            else if (start && head && !serving(r)) failed += (failed.empty() ? "" : "; ") + describe(r);
        }
        if (!pending.empty()) return {Progress::waiting, pending};
        if (!failed.empty()) return {Progress::failed, failed};
        return {Progress::done, ""};
    });
    return exit_status::ok;
}

int reload_verb(Invocation& in) {
    // The daemon answers after the new configuration is applied, or with why it was refused.
    in.bus().manage(api::reload, "reloading the configuration");
    return exit_status::ok;
}

}  // namespace dpctl
