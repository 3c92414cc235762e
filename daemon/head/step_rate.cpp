#include "head/step_rate.hpp"

namespace dpengine {

void StepRate::add(Clock::time_point at, uint64_t steps, uint64_t dummy_steps) {
    if (!samples_.empty()) {
        const Sample& last = samples_.back();
        if (steps < last.steps || dummy_steps < last.dummy_steps || at < last.at) samples_.clear();
    }
    samples_.push_back({at, steps, dummy_steps});
    // Keep the newest sample that is at least a window old as the start; drop those before it.
    while (samples_.size() > 2 && samples_[1].at <= at - window_) samples_.pop_front();
}

double StepRate::steps_per_second() const {
    if (samples_.size() < 2) return 0;
    const Sample& first = samples_.front();
    const Sample& last = samples_.back();
    double seconds = std::chrono::duration<double>(last.at - first.at).count();
    if (seconds <= 0) return 0;
    uint64_t steps = (last.steps - first.steps) + (last.dummy_steps - first.dummy_steps);
    return static_cast<double>(steps) / seconds;
}

double StepRate::dummy_share() const {
    if (samples_.size() < 2) return 0;
    const Sample& first = samples_.front();
    const Sample& last = samples_.back();
    uint64_t dummy = last.dummy_steps - first.dummy_steps;
    uint64_t steps = (last.steps - first.steps) + dummy;
    return steps ? static_cast<double>(dummy) / static_cast<double>(steps) : 0;
}

}  // namespace dpengine
