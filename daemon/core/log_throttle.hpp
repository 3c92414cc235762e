// At most one log line per interval for one kind of event that outsiders can cause at will
// (connections refused, clients closed), with the count of those left unlogged since: a flood
// costs the journal a line every few seconds, and the operator still sees how many.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>

namespace dpengine {

class LogThrottle {
public:
    using Clock = std::chrono::steady_clock;
    explicit LogThrottle(Clock::duration interval = std::chrono::seconds(10)) : interval_(interval) {}

    // An event happened: the number of events not logged before it when it is to be logged
    // now, nothing when it is to be counted only.
    std::optional<uint64_t> allow(Clock::time_point now = Clock::now()) {
        if (logged_once_ && now - last_ < interval_) {
            ++suppressed_;
            return std::nullopt;
        }
        logged_once_ = true;
        last_ = now;
        uint64_t before = suppressed_;
        suppressed_ = 0;
        return before;
    }

private:
    Clock::duration interval_;
    Clock::time_point last_{};
    bool logged_once_ = false;
    uint64_t suppressed_ = 0;
};

}  // namespace dpengine
