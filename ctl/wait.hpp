// Waiting for what a Manager method only begins (a start, a stop, a drain, an assignment):
// subscribed to the PropertiesChanged signals of the ranks concerned, re-reading the ranks and
// checking the condition once right after subscribing (a change before it is not missed) and
// again on each signal, until it is met, fails, or --timeout passes.
#pragma once

#include "bus_client.hpp"
#include "verbs.hpp"

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace dpctl {

// What a wait sees in one look at the ranks: done, still going, or failed (with why).
struct Progress {
    enum { waiting, done, failed } outcome = waiting;
    std::string message;
};
using Check = std::function<Progress(const std::vector<RankRow>&)>;

struct Wait {
    std::string what;             // "stopping rank 2", for messages
    std::vector<uint32_t> ranks;  // the ranks whose objects' PropertiesChanged wake the wait
    // Re-read at least this often too: for a condition on a property the daemon does not
    // signal (InFlight, which changes with every request).
    std::optional<std::chrono::milliseconds> recheck;
};

// Returns once `check` says done; throws Failure (exit status 1) when it says failed or the
// timeout passes, or as a bus call does.
void wait_for(BusClient& bus, const Options& options, const Wait& wait, const Check& check);

}  // namespace dpctl
