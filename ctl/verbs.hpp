// dpctl's verbs: one function each, taking the options and the arguments after the verb and
// returning the exit status (documented in --help and dpctl(1)). A verb that cannot go on
// throws Failure; main() prints its message and exits with its status.
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
    bool block = true;                 // wait for start/stop/restart/drain to complete
    double timeout_s = 600;            // ... for at most this long
    bool follow = false;               // logs
    std::optional<unsigned> lines;     // logs
};

// A number as typed on the command line: decimal digits only, at most UINT32_MAX; nullopt
// otherwise, for the caller to name what it expected (exit 2, before any bus call).
std::optional<uint32_t> parse_uint32(const std::string& text);

// A rank number as typed (exit 2 otherwise, before any bus call).
uint32_t parse_rank(const std::string& verb, const std::string& text);

int status_verb(const Options& options, const Args& args);
int ranks_verb(const Options& options, const Args& args);
int rank_action_verb(const std::string& verb, const Options& options, const Args& args);  // start stop ...
int node_action_verb(const std::string& verb, const Options& options, const Args& args);  // start-node stop-node
int reload_verb(const Options& options, const Args& args);
int logs_verb(const Options& options, const Args& args);
int keys_verb(const Args& args);
int nodes_verb(const Options& options, const Args& args);
struct NodeRow;
// The nodes table of 'dpctl nodes', which 'dpctl status' shows too.
void print_nodes_table(const std::vector<NodeRow>& nodes, const Options& options, bool colour);
int assign_verb(const Options& options, const Args& args);  // assign NODE --start-rank R --count N

}  // namespace dpctl
