// Owns one node: the runtime directory, the rank processes, and on a head the rank link and
// the HTTP front-end, all on one event loop. Drives start-up (spawn, handshake deadlines,
// READY=1) and shutdown (stop accepting, drain, stop ranks).
#pragma once

#include "core/config.hpp"

#include <string>
#include <vector>

namespace dpengine {

// Runs the node until SIGTERM/SIGINT; returns the process exit code. SIGHUP (and the bus's
// Reload) parse `argv` again the way main() did and apply what can change while running.
int run_node(const Config& config, std::vector<std::string> argv);

}  // namespace dpengine
