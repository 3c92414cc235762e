#include "node/restart_limit.hpp"

#include <catch2/catch.hpp>

using dpengine::RestartLimit;
using dpengine::SupervisionSection;
using namespace std::chrono_literals;

namespace {

SupervisionSection settings(uint32_t budget, double window, double backoff = 0.5, double backoff_max = 30.0) {
    SupervisionSection s;
    s.restart_budget = budget;
    s.restart_window = window;
    s.restart_backoff = backoff;
    s.restart_backoff_max = backoff_max;
    return s;
}

const auto t0 = RestartLimit::Clock::time_point{} + 1000s;

// An exit `at` seconds after t0: whether the limit admits its restart, and how many restarts
// it counts afterwards.
struct Exit {
    std::chrono::seconds at;
    bool admitted;
    size_t counted;
};

void replay(RestartLimit& limit, const SupervisionSection& s, std::initializer_list<Exit> exits) {
    for (const Exit& exit : exits) {
        INFO("the exit at t0 + " << exit.at.count() << " s");
        CHECK(limit.admit(s, t0 + exit.at).has_value() == exit.admitted);
        CHECK(limit.counted() == exit.counted);
    }
}

}  // namespace

TEST_CASE("restarts within the budget are admitted and counted", "[restart_limit]") {
    RestartLimit limit;
    replay(limit, settings(3, 300), {{1s, true, 1}, {2s, true, 2}, {3s, true, 3}});
}

TEST_CASE("the budget spent inside the window admits nothing, and counts nothing", "[restart_limit]") {
    RestartLimit limit;
    replay(limit, settings(2, 300), {{0s, true, 1}, {10s, true, 2}, {20s, false, 2}, {299s, false, 2}});
    RestartLimit never;
    replay(never, settings(0, 300), {{0s, false, 0}});  // 0: never restart
}

TEST_CASE("the window slides: restarts older than it give their budget back", "[restart_limit]") {
    RestartLimit limit;
    // At 61 s the first restart has left the window: one comes back, not two; by 122 s both
    // of the later ones have left it.
    replay(limit, settings(2, 60),
           {{0s, true, 1}, {30s, true, 2}, {59s, false, 2}, {61s, true, 2}, {62s, false, 2}, {122s, true, 1}});
}

TEST_CASE("the back-off doubles with each counted restart up to its maximum", "[restart_limit]") {
    RestartLimit limit;
    const auto s = settings(100, 3600, 0.5, 5.0);
    std::vector<std::chrono::milliseconds> waits;
    for (int i = 0; i < 6; ++i) waits.push_back(*limit.admit(s, t0 + std::chrono::seconds(i)));
    REQUIRE(waits == std::vector<std::chrono::milliseconds>{500ms, 1000ms, 2000ms, 4000ms, 5000ms, 5000ms});
    // Far past 2^20 restarts' worth of doubling, the wait stays the maximum.
    RestartLimit many;
    std::chrono::milliseconds last{};
    for (int i = 0; i < 40; ++i) last = *many.admit(s, t0);
    REQUIRE(last == 5000ms);
}

TEST_CASE("the back-off starts over once the window forgets the restarts, or on reset", "[restart_limit]") {
    const auto s = settings(10, 60, 0.5, 30.0);
    RestartLimit limit;
    REQUIRE(*limit.admit(s, t0) == 500ms);
    REQUIRE(*limit.admit(s, t0 + 1s) == 1000ms);
    REQUIRE(*limit.admit(s, t0 + 2s) == 2000ms);
    REQUIRE(*limit.admit(s, t0 + 100s) == 500ms);  // the window is past all three
    REQUIRE(*limit.admit(s, t0 + 101s) == 1000ms);
    limit.reset();
    REQUIRE(limit.counted() == 0);
    REQUIRE(*limit.admit(s, t0 + 102s) == 500ms);
}

TEST_CASE("a reload's settings apply at the next exit", "[restart_limit]") {
    RestartLimit limit;
    replay(limit, settings(5, 300), {{0s, true, 1}, {1s, true, 2}});
    REQUIRE_FALSE(limit.admit(settings(2, 300), t0 + 2s));            // the lowered budget is spent
    REQUIRE(*limit.admit(settings(5, 300, 2.0), t0 + 3s) == 8000ms);  // third restart, new base wait
}
