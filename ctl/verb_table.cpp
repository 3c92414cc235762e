#include "verb_table.hpp"

#include "options.hpp"

#include <cstdio>
#include <stdexcept>

namespace dpctl {

namespace {

using Access = Verb::Access;

constexpr Verb verb_table[] = {
    // name          usage                              min  max         access          own options
    {"status", "", 0, 0, Access::read, false, status_verb},
    {"ranks", "", 0, 0, Access::read, false, ranks_verb},
    {"logs", "RANK", 1, 1, Access::local, false, logs_verb},
    {"nodes", "", 0, 0, Access::read, false, nodes_verb},
    {"start", "RANK", 1, 1, Access::manage, false, rank_action_verb},
    {"stop", "RANK", 1, 1, Access::manage, false, rank_action_verb},
    {"restart", "RANK", 1, 1, Access::manage, false, rank_action_verb},
    {"drain", "RANK", 1, 1, Access::manage, false, rank_action_verb},
    {"undrain", "RANK", 1, 1, Access::manage, false, rank_action_verb},
    {"start-node", "", 0, 0, Access::manage, false, node_action_verb},
    {"stop-node", "", 0, 0, Access::manage, false, node_action_verb},
    {"reload", "", 0, 0, Access::manage, false, reload_verb},
    {"assign", "NODE --start-rank R --count N", 1, any_number, Access::manage, true, assign_verb},
    {"keys", "generate|show|api-key|hash-api-key ...", 1, any_number, Access::local, true, keys_verb},
    {"version", "", 0, 0, Access::local, false, version_verb},
};

// "no arguments", "one RANK" (the usage's first word names what the argument is).
std::string exactly(const Verb& verb) {
    if (verb.max_args == 0) return "no arguments";
    const std::string_view noun = verb.usage.substr(0, verb.usage.find(' '));
    return (verb.max_args == 1 ? "one " : std::to_string(verb.max_args) + " ") + std::string(noun);
}

void check_argument_count(const Verb& verb, const std::string& name, const Args& args) {
    if (args.size() >= verb.min_args && args.size() <= verb.max_args) return;
    std::string message;
    if (verb.min_args == verb.max_args) {
        message = name + " takes " + (verb.max_args == 0 ? "" : "exactly ") + exactly(verb);
        if (verb.max_args == 0) message += " (got '" + args[0] + "')";
        else if (!args.empty()) message += " (got " + std::to_string(args.size()) + ")";
    } else if (args.size() < verb.min_args) {
        message = name + " needs arguments";
    } else {
        message = name + " takes at most " +
            (verb.max_args == 1 ? std::string("one argument") : std::to_string(verb.max_args) + " arguments") +
            " (got " + std::to_string(args.size()) + ")";
    }
    message += "; usage: dpctl " + name + (verb.usage.empty() ? "" : " " + std::string(verb.usage));
    throw UsageError{message};
}

}  // namespace

std::span<const Verb> verbs() { return verb_table; }

BusClient& Invocation::bus() {
    if (verb.access == Verb::Access::local) {
        throw std::logic_error("dpctl " + std::string(verb.name) +
                               " is marked local in the verb table but asked for the bus");
    }
    if (!bus_) bus_.emplace(BusClient::connect());
    return *bus_;
}

const Verb* find_verb(std::span<const Verb> table, std::string_view name) {
    for (const Verb& verb : table) {
        if (verb.name == name) return &verb;
    }
    return nullptr;
}

int dispatch_verb(std::span<const Verb> table, std::string_view prefix, const std::string& name, const Options& options,
                  const Args& args) {
    const std::string full_name = std::string(prefix) + name;
    const Verb* verb = find_verb(table, name);
    if (!verb) throw UsageError{"unknown command '" + full_name + "'"};
    check_argument_count(*verb, full_name, args);
    Invocation invocation(*verb, options, args);
    return verb->handler(invocation);
}

int version_verb(Invocation&) {
    std::printf("dpctl %s\n", DPENGINE_VERSION);
    return exit_status::ok;
}

}  // namespace dpctl
