#include "head/loop_stall.hpp"

#include <catch2/catch.hpp>

using dpengine::LoopStall;
using namespace std::chrono_literals;

TEST_CASE("a check that runs in time, or late within the tolerance, excuses nothing", "[loop_stall]") {
    LoopStall stall;
    auto t0 = LoopStall::Clock::time_point{} + 1000s;
    CHECK(stall.stalled_for(t0 + 10s, 300ms) == LoopStall::Clock::duration::zero());  // never armed
    stall.due_at(t0 + 100ms);
    CHECK(stall.stalled_for(t0 + 100ms, 300ms) == LoopStall::Clock::duration::zero());
    CHECK(stall.stalled_for(t0 + 350ms, 300ms) == LoopStall::Clock::duration::zero());
}

TEST_CASE("a check that runs later than the tolerance reports how long the loop stood still", "[loop_stall]") {
    LoopStall stall;
    auto t0 = LoopStall::Clock::time_point{} + 1000s;
    stall.due_at(t0 + 100ms);
    CHECK(stall.stalled_for(t0 + 100ms + 4s, 300ms) == 4s);
}

TEST_CASE("a peer's last-heard time moves forward by the stall, never past now", "[loop_stall]") {
    auto now = LoopStall::Clock::time_point{} + 1000s;
    // Heard 5 s ago, 4 s of it the head's own stall: as if heard 1 s ago.
    CHECK(LoopStall::excused(now - 5s, 4s, now) == now - 1s);
    // Heard just before a long stall: now, not in the future.
    CHECK(LoopStall::excused(now - 1s, 4s, now) == now);
    CHECK(LoopStall::excused(now - 5s, 0s, now) == now - 5s);
}
