// dpengine-rank: one engine rank. Started by dpengined with the head's address and its rank;
// learns everything else from the head in the handshake, then runs the step loop until the
// head says SHUTDOWN, SIGTERM arrives or the head goes away.
#include "core/exit_codes.hpp"
#include "engine/rank.hpp"

int main(int argc, char** argv) {
    auto options = dpengine::engine::parse_rank_options(argc, argv);
    if (!options) return dpengine::exit_code::usage;
    return dpengine::engine::run_rank(*options);
}
