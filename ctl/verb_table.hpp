// dpctl's commands as a table, as systemctl has them: each verb's name, how many arguments it
// takes, whether it needs the bus or changes something (polkit), and its handler. One
// dispatch_verb() checks the argument count against the row and runs the handler, so no verb
// counts its own arguments.
#pragma once

#include "bus_client.hpp"
#include "verbs.hpp"

#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace dpctl {

class Invocation;

struct Verb {
    enum class Access {
        local,   // files or other programs only: no bus (keys, logs, version)
        read,    // reads org.dpengine1: everyone
        manage,  // calls a Manager method that changes something: root or group dpengine, and
                 // the method's polkit action where polkit runs
    };
    std::string_view name;
    std::string_view usage;  // its arguments, as in "usage: dpctl NAME USAGE"; "" for none
    size_t min_args;
    size_t max_args;  // any_number: no upper bound
    Access access;
    bool own_options;  // words that look like options ("--count 2") are its arguments
    int (*handler)(Invocation&);
};

inline constexpr size_t any_number = static_cast<size_t>(-1);

// A verb's run: its row, the options and its arguments, and the bus, connected on first use so
// that a verb checks its arguments before any bus call (exit status 2 without a daemon).
class Invocation {
public:
    Invocation(const Verb& verb, const Options& options, const Args& args) : verb(verb), options(options), args(args) {}
    Invocation(const Invocation&) = delete;
    Invocation& operator=(const Invocation&) = delete;

    // Throws Failure (not running) without a bus, std::logic_error for a local verb.
    BusClient& bus();

    const Verb& verb;
    const Options& options;
    const Args& args;

private:
    std::optional<BusClient> bus_;
};

// dpctl's commands (verb_table.cpp) and those of 'dpctl keys' (keys.cpp).
std::span<const Verb> verbs();
std::span<const Verb> keys_verbs();

// The row named `name`, or nullptr.
const Verb* find_verb(std::span<const Verb> table, std::string_view name);

// Runs the verb `name` of `table` with `args`: throws UsageError (exit status 2) for an unknown
// verb or an argument count outside its row's bounds, naming the usage. `prefix` is what comes
// before the verb in messages: "" for dpctl's commands, "keys " for those of 'dpctl keys'.
int dispatch_verb(std::span<const Verb> table, std::string_view prefix, const std::string& name, const Options& options,
                  const Args& args);

}  // namespace dpctl
