// Owns one node: the runtime directory, the rank processes, and on a head the rank link and
// the HTTP front-end, all on one event loop. Drives start-up (spawn, handshake deadlines,
// READY=1) and shutdown (stop accepting, drain, stop ranks).
#pragma once

#include "core/config.hpp"

namespace dpengine {

// Runs the node until SIGTERM/SIGINT; returns the process exit code.
int run_node(const Config& config);

}  // namespace dpengine
