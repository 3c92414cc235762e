#include "refusal_limiter.hpp"

namespace dpengine {

void RefusalLimiter::configure(uint32_t limit, double mute_seconds) {
    limit_ = limit;
    mute_ = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(mute_seconds));
}

bool RefusalLimiter::muted(const std::string& peer, Clock::time_point now) const {
    auto it = peers_.find(peer);
    return it != peers_.end() && now < it->second.muted_until;
}

bool RefusalLimiter::refused(const std::string& peer, Clock::time_point now) {
    if (limit_ == 0) return false;
    if (peers_.size() >= max_peers && !peers_.count(peer)) evict(now);
    Peer& p = peers_[peer];
    if (now - p.window_start >= std::chrono::seconds(1)) {
        p.window_start = now;
        p.in_window = 0;
    }
    if (++p.in_window <= limit_ || now < p.muted_until) return false;
    p.muted_until = now + mute_;
    return true;
}

// Forgets peers neither muted nor refused within the last second; if that is not enough (a
// flood from many addresses), forgets every peer that is not muted.
void RefusalLimiter::evict(Clock::time_point now) {
    for (auto it = peers_.begin(); it != peers_.end();) {
        bool idle = now >= it->second.muted_until && now - it->second.window_start >= std::chrono::seconds(1);
        it = idle ? peers_.erase(it) : std::next(it);
    }
    if (peers_.size() < max_peers) return;
    for (auto it = peers_.begin(); it != peers_.end();)
        it = now >= it->second.muted_until ? peers_.erase(it) : std::next(it);
}

}  // namespace dpengine
