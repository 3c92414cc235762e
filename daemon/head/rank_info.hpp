// A rank's state and the figures the head keeps about it (status, metrics, the node link).
// Its own header, with no ZeroMQ in it, so that the pieces RankLink is built of
// (head/dp_group_coordinator.hpp) and the bus (bus/node_control.hpp) can use it without
// RankLink.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

namespace dpengine {

// unhealthy: registered and ready, but its engine's server failed a health probe; it gets no
// new requests until a probe passes again (or the rank ends after engine.health_failures).
enum class RankState { starting, connecting, initializing, ready, unhealthy, draining, stopped, failed };
const char* to_string(RankState state);
std::optional<RankState> rank_state_from_string(std::string_view name);

struct RankInfo {
    uint32_t rank = 0;
    RankState state = RankState::starting;
    std::string node;
    std::string device;
    uint32_t in_flight = 0;
    uint32_t running = 0;  // as the rank last reported
    uint32_t waiting = 0;
    uint32_t engine_queued = 0;  // the engine's own figures, where it reports them
    double kv_cache_usage = 0;
    uint32_t health_failures = 0;  // failed health probes of the engine's server in a row
    uint64_t served = 0;
    uint64_t tokens = 0;
    std::string last_error;
    std::string reason;     // the reason code of last_error
    uint32_t pid = 0;       // filled in by the node that runs the rank
    uint64_t restarts = 0;  // likewise
    // Losses, restarts and recoveries by reason code (rank-exited, heartbeat-timeout, hung,
    // restart-budget-exhausted, restarted, rejoined, ...): dpengine_rank_events_total.
    std::map<std::string, uint64_t> events;
    // The rank's DP group (lockstep mode), as it last reported (GROUP_STATE).
    std::string group_kind;   // empty: no group (independent mode)
    std::string group_state;  // forming, running, paused, failed, idle
    uint64_t group_epoch = 0;
    uint64_t wave = 0;
    uint64_t lockstep_steps = 0;
    uint64_t dummy_steps = 0;
    // From the rank's heartbeats (step_rate.hpp): real and dummy steps per second, and the
    // dummy share of them, over the last few seconds; the device memory the engine holds.
    double steps_per_second = 0;
    double dummy_step_share = 0;
    uint64_t memory_used = 0;
    // True where the group and activity figures are known: always on the head; on a headless
    // node once the head reported them over the node link.
    bool activity_known = false;
};

}  // namespace dpengine
