// The restart budget of one rank (supervision.restart_budget restarts per restart_window)
// and its back-off (restart_backoff, doubling with each restart the window still counts, up
// to restart_backoff_max), as systemd's RateLimit and ratelimit_below() keep a unit's start
// limit. The settings are read at each call, so a reload applies to the next exit.
#pragma once

#include "core/config.hpp"

#include <chrono>
#include <cstddef>
#include <deque>
#include <optional>

namespace dpengine {

class RestartLimit {
public:
    using Clock = std::chrono::steady_clock;

    // An unplanned exit at `now`: the wait before restarting, counted as a restart, or
    // nothing when the budget is spent (nothing is counted then).
    std::optional<std::chrono::milliseconds> admit(const SupervisionSection& settings, Clock::time_point now);
    // Restarts the window counted at the last admit(), the one it admitted included.
    size_t counted() const { return restarts_.size(); }
    // An operator's start: a fresh budget, and the back-off starts over.
    void reset() { restarts_.clear(); }

private:
    std::deque<Clock::time_point> restarts_;  // within the window, oldest first
};

}  // namespace dpengine
