// The routing decision, apart from the socket and the registry (as a proxy's router asks a
// load balancer for a host and a retry state whether it may retry): which rank takes a new
// request, and whether a request whose rank was lost may go to another. Pure and small, so
// the unit tests drive it directly.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

namespace dpengine::head {

// One rank as the router sees it.
struct RouteCandidate {
    uint32_t rank = 0;
    bool routable = false;       // ready, not draining, and its engine's health probes pass
    uint32_t in_flight = 0;      // requests the head has sent it that have not ended
    uint32_t engine_queued = 0;  // requests queued inside its engine (the engine's own figure)
    double kv_cache_usage = 0;   // share of its engine's KV cache in use, 0..1 (0: not known)
};

// Least loaded first: the fewest requests in flight plus queued in the engine, then the
// emptiest KV cache; ties go round-robin, so equal ranks share the work.
class LoadPolicy {
public:
    // The rank to use among CANDIDATES (indexed by rank), other than EXCEPT; none when no
    // candidate is routable.
    std::optional<uint32_t> pick(std::span<const RouteCandidate> candidates,
                                 std::optional<uint32_t> except = std::nullopt);

private:
    uint32_t next_ = 0;  // where the round-robin scan starts
};

// What a request that lost its rank may do. It moves once to another rank, and only while the
// client has received nothing from it: output already sent cannot be taken back, and sending
// it twice would be worse.
struct RetryState {
    bool responded = false;  // some of the response reached the head (and so the client)
    bool retried = false;

    bool may_retry() const { return !responded && !retried; }
};

}  // namespace dpengine::head
