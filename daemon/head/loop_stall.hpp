// How late a periodic check on the head's event loop runs. A check that runs well past its due
// time means the loop did not run meanwhile: the daemon, or its whole machine, was stalled
// (SIGSTOP, a hypervisor pause, memory pressure). Peers are not to blame for that time: their
// heartbeats were sent, and wait unread in the socket. The liveness checks (RankLink's
// heartbeat timeout, NodeRegistry's lost nodes) move their peers' clocks forward by the stall.
#pragma once

#include <chrono>

namespace dpengine {

class LoopStall {
public:
    using Clock = std::chrono::steady_clock;

    // The next check is due at `at` (when its timer is armed).
    void due_at(Clock::time_point at) { due_ = at; }

    // How long past its due time the check runs at `now`, when that is more than `tolerance`
    // (a heartbeat interval: lateness within it is ordinary scheduling); zero otherwise, and
    // before the first due_at().
    Clock::duration stalled_for(Clock::time_point now, Clock::duration tolerance) const {
        if (due_ == Clock::time_point{}) return Clock::duration::zero();
        auto late = now - due_;
        return late > tolerance ? late : Clock::duration::zero();
    }

    // A peer last heard at `last_heard`, with the stall not counted: at most `now`.
    static Clock::time_point excused(Clock::time_point last_heard, Clock::duration stall, Clock::time_point now) {
        return last_heard + stall < now ? last_heard + stall : now;
    }

private:
    Clock::time_point due_{};
};

}  // namespace dpengine
