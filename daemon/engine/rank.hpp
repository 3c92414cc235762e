// The engine rank's life: connect, HELLO, CONFIG, backend init, READY, then the step loop.
#pragma once

#include "engine/dp_group.hpp"

#include <cstdint>
#include <optional>
#include <string>

namespace dpengine::engine {

struct RankOptions {
    std::string connect;  // the head's rank endpoint
    uint32_t rank = 0;
    uint32_t local_rank = 0;
    std::string node;
    uint32_t dp_size = 0;           // the DP size this node was configured with; 0: not stated
    double connect_timeout = 30.0;  // seconds to wait for the first CONFIG; 0: wait for ever
    uint32_t max_message_bytes = 16 << 20;
    std::string key_file;    // CURVE: this node's secret key file
    std::string server_key;  // CURVE: the head's public key (Z85)
    // Seconds a configured rank keeps its engine while nothing comes from the head; then it
    // exits with exit_code::unreachable so the engine's memory is freed. 0: wait for ever.
    double head_grace_period = 0;
};

// Prints the problem and returns nothing on a bad command line.
std::optional<RankOptions> parse_rank_options(int argc, char** argv);

// Returns the process exit code (core/exit_codes.hpp).
int run_rank(const RankOptions& options);

}  // namespace dpengine::engine
