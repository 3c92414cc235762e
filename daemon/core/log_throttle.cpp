#include "log_throttle.hpp"

#include <fmt/format.h>

#include <utility>

namespace dpengine {

std::optional<uint64_t> LogThrottle::admit(const std::string& reason, Clock::time_point now, uint64_t events) {
    State& state = reasons_[reason];
    if (state.logged && now - state.last < interval_) {
        state.suppressed += events;
        return std::nullopt;
    }
    state.logged = true;
    state.last = now;
    return std::exchange(state.suppressed, 0) + events - 1;
}

std::string LogThrottle::suppressed_note(uint64_t suppressed) {
    return suppressed ? fmt::format(" ({} more suppressed since the last line for this reason)", suppressed) : "";
}

}  // namespace dpengine
