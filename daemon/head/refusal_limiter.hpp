// Per-peer rate limit on the head's refusals. A peer (one address) refused more than `limit`
// times within a second is muted for `mute` seconds: its messages are dropped unanswered and
// uncounted work, so a flood of bad HELLOs costs the head no replies and no log lines.
// Registered ranks are never muted (the head checks registration first). Bounded: a flood of
// addresses cannot grow the table past max_peers.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <unordered_map>

namespace dpengine {

class RefusalLimiter {
public:
    using Clock = std::chrono::steady_clock;
    static constexpr size_t max_peers = 4096;

    // limit 0: never mute.
    RefusalLimiter(uint32_t limit, double mute_seconds) { configure(limit, mute_seconds); }
    void configure(uint32_t limit, double mute_seconds);

    bool muted(const std::string& peer, Clock::time_point now) const;
    // Counts a refusal; true when it starts a mute (the caller logs that once).
    bool refused(const std::string& peer, Clock::time_point now);
    size_t tracked() const { return peers_.size(); }

private:
    struct Peer {
        Clock::time_point window_start{};
        uint32_t in_window = 0;
        Clock::time_point muted_until{};
    };
    void evict(Clock::time_point now);

    uint32_t limit_ = 0;
    Clock::duration mute_{};
    std::unordered_map<std::string, Peer> peers_;
};

}  // namespace dpengine
