// dpctl's verbs: one function each, taking its Invocation (verb_table.hpp) and returning the
// exit status (documented in --help and dpctl(1)). A verb that cannot go on throws Failure;
// run() prints its message and returns its status.
#pragma once

#include "core/dpctl_exit.hpp"

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace dpctl {

namespace exit_status = dpengine::dpctl_exit;

struct Failure : std::runtime_error {
    Failure(int status, const std::string& message) : std::runtime_error(message), status(status) {}
    int status;
};

using Args = std::vector<std::string>;

// The options every verb sees (those that do not apply to a verb are ignored by it).
struct Options {
    bool json = false;
    bool legend = true;
    bool block = true;              // wait for start/stop/restart/drain to complete
    double timeout_s = 600;         // ... for at most this long
    bool follow = false;            // logs
    std::optional<unsigned> lines;  // logs
};

// A number as typed on the command line: decimal digits only, at most UINT32_MAX; nullopt
// otherwise, for the caller to name what it expected (exit 2, before any bus call).
std::optional<uint32_t> parse_uint32(const std::string& text);

// A rank number as typed (exit 2 otherwise, before any bus call).
uint32_t parse_rank(const std::string& verb, const std::string& text);

// The handlers of verb_table.cpp's rows; their argument counts are checked before they run.
class Invocation;
int status_verb(Invocation& in);
int ranks_verb(Invocation& in);
int rank_action_verb(Invocation& in);  // start stop restart drain undrain
int node_action_verb(Invocation& in);  // start-node stop-node
int reload_verb(Invocation& in);
int logs_verb(Invocation& in);
int keys_verb(Invocation& in);  // dispatches to keys_verbs()
int nodes_verb(Invocation& in);
int assign_verb(Invocation& in);  // assign NODE --start-rank R --count N
int version_verb(Invocation& in);

}  // namespace dpctl
