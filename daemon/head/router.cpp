#include "router.hpp"

namespace dpengine::head {

std::optional<uint32_t> LoadPolicy::pick(std::span<const RouteCandidate> candidates, std::optional<uint32_t> except) {
    const uint32_t n = static_cast<uint32_t>(candidates.size());
    const RouteCandidate* best = nullptr;
    auto load = [](const RouteCandidate& c) { return uint64_t(c.in_flight) + c.engine_queued; };
    for (uint32_t i = 0; i < n; ++i) {
        const RouteCandidate& c = candidates[(next_ + i) % n];
        if (!c.routable || c.rank == except) continue;
        if (!best || load(c) < load(*best) || (load(c) == load(*best) && c.kv_cache_usage < best->kv_cache_usage))
            best = &c;
    }
    if (!best) return std::nullopt;
    next_ = static_cast<uint32_t>((best - candidates.data()) + 1) % n;
    return best->rank;
}

}  // namespace dpengine::head
