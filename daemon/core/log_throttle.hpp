// At most one log line per reason per interval, as dpengine-protocol(7) promises for
// refusals: the first event of a reason is logged, the ones that follow within the interval
// are only counted, and the next line logged for that reason says how many it stands for. So
// a flood of refused connections costs the journal one line per reason every 10 seconds.
// Bounded by the number of reasons, which the callers name from a fixed set.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace dpengine {

class LogThrottle {
public:
    using Clock = std::chrono::steady_clock;
    static constexpr std::chrono::seconds default_interval{10};

    explicit LogThrottle(Clock::duration interval = default_interval) : interval_(interval) {}

    // Whether EVENTS events of REASON (one line names the first) are to be logged now: if so,
    // how many more events the line stands for (those left unlogged since the reason's last
    // line, and the other EVENTS); if not, nothing (they are counted).
    std::optional<uint64_t> admit(const std::string& reason, Clock::time_point now = Clock::now(), uint64_t events = 1);

    // The end of a logged line that stands for SUPPRESSED more events: "" when there are none.
    static std::string suppressed_note(uint64_t suppressed);

private:
    struct State {
        Clock::time_point last{};
        bool logged = false;
        uint64_t suppressed = 0;
    };
    Clock::duration interval_;
    std::map<std::string, State> reasons_;
};

}  // namespace dpengine
