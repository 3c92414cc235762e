#include "head/step_rate.hpp"

#include <catch2/catch.hpp>

using dpengine::StepRate;
using namespace std::chrono_literals;

namespace {
const auto t0 = StepRate::Clock::time_point{} + 1000s;
}

TEST_CASE("step rate: nothing to say before two heartbeats", "[step_rate]") {
    StepRate rate(5s);
    CHECK(rate.steps_per_second() == 0);
    CHECK(rate.dummy_share() == 0);
    rate.add(t0, 100, 50);
    CHECK(rate.steps_per_second() == 0);
    CHECK(rate.dummy_share() == 0);
}

TEST_CASE("step rate: real and dummy steps per second, and the dummy share, over the window", "[step_rate]") {
    StepRate rate(5s);
    rate.add(t0, 1000, 0);
    rate.add(t0 + 1s, 1010, 30);  // 10 real + 30 dummy in a second
    CHECK(rate.steps_per_second() == Approx(40));
    CHECK(rate.dummy_share() == Approx(0.75));
    rate.add(t0 + 2s, 1050, 30);                   // 40 real, no dummy
    CHECK(rate.steps_per_second() == Approx(40));  // 80 steps in 2 s
    CHECK(rate.dummy_share() == Approx(30.0 / 80.0));
}

TEST_CASE("step rate: old heartbeats leave the window", "[step_rate]") {
    StepRate rate(5s);
    rate.add(t0, 0, 0);
    for (int s = 1; s <= 10; ++s) rate.add(t0 + s * 1s, 0, uint64_t(s) * 100);  // 100 dummy/s, all idle
    CHECK(rate.steps_per_second() == Approx(100));
    CHECK(rate.dummy_share() == Approx(1.0));
    // Then the rank gets work: only real steps. Within one window the dummy steps fade out.
    for (int s = 11; s <= 20; ++s) rate.add(t0 + s * 1s, uint64_t(s - 10) * 20, 1000);
    CHECK(rate.steps_per_second() == Approx(20));
    CHECK(rate.dummy_share() == 0);
}

TEST_CASE("step rate: counters that go backwards start afresh; reset forgets", "[step_rate]") {
    StepRate rate(5s);
    rate.add(t0, 500, 500);
    rate.add(t0 + 1s, 600, 500);
    CHECK(rate.steps_per_second() == Approx(100));
    rate.add(t0 + 2s, 3, 0);  // a new process
    CHECK(rate.steps_per_second() == 0);
    rate.add(t0 + 3s, 13, 10);
    CHECK(rate.steps_per_second() == Approx(20));
    CHECK(rate.dummy_share() == Approx(0.5));
    rate.reset();
    CHECK(rate.steps_per_second() == 0);
    CHECK(rate.dummy_share() == 0);
}
