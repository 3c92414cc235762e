#include "node/restart_limit.hpp"

#include <algorithm>

namespace dpengine {

std::optional<std::chrono::milliseconds> RestartLimit::admit(const SupervisionSection& settings,
                                                             Clock::time_point now) {
    using Seconds = std::chrono::duration<double>;
    while (!restarts_.empty() && now - restarts_.front() > Seconds(settings.restart_window)) restarts_.pop_front();
    if (restarts_.size() >= settings.restart_budget) return std::nullopt;
    // 2^20 times the first wait is past any restart_backoff_max: the shift stays defined.
    const double factor = double(1u << std::min<size_t>(restarts_.size(), 20));
    restarts_.push_back(now);
    return std::chrono::duration_cast<std::chrono::milliseconds>(
        Seconds(std::min(settings.restart_backoff_max, settings.restart_backoff * factor)));
}

}  // namespace dpengine
