// A rank's step rate as the head sees it: steps per second (real and dummy together) and the
// share of dummy steps, from the cumulative counters its heartbeats carry, over a short
// window. Counters that go backwards (a new process, a new engine) start the window afresh.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>

namespace dpengine {

class StepRate {
public:
    using Clock = std::chrono::steady_clock;

    // The window spans at least `window` once that much history exists (older samples are
    // dropped as long as one at or before the window's start remains).
    explicit StepRate(Clock::duration window = std::chrono::seconds(5)) : window_(window) {}

    void add(Clock::time_point at, uint64_t steps, uint64_t dummy_steps);
    // Forgets the history (the rank is gone); the figures read 0 until two samples arrive.
    void reset() { samples_.clear(); }

    // (Δsteps + Δdummy) / Δt over the window; 0 with fewer than two samples.
    double steps_per_second() const;
    // Δdummy / (Δsteps + Δdummy) over the window, 0..1; 0 when no step was taken.
    double dummy_share() const;

private:
    struct Sample {
        Clock::time_point at;
        uint64_t steps = 0;
        uint64_t dummy_steps = 0;
    };
    Clock::duration window_;
    std::deque<Sample> samples_;
};

}  // namespace dpengine
