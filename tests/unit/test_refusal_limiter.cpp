#include "head/handshake_monitor.hpp"
#include "core/log_throttle.hpp"
#include "head/refusal_limiter.hpp"

#include <catch2/catch.hpp>
#include <zmq.h>

using dpengine::RefusalLimiter;
using namespace std::chrono_literals;

TEST_CASE("a peer refused more than the limit within a second is muted, then let back", "[refusal_limiter]") {
    RefusalLimiter limiter(3, 10.0);
    auto t0 = RefusalLimiter::Clock::time_point{} + 1000s;
    for (int i = 0; i < 3; ++i) REQUIRE_FALSE(limiter.refused("10.0.0.9", t0));
    REQUIRE_FALSE(limiter.muted("10.0.0.9", t0));
    REQUIRE(limiter.refused("10.0.0.9", t0 + 100ms));  // the fourth within the second: muted
    REQUIRE(limiter.muted("10.0.0.9", t0 + 5s));
    REQUIRE_FALSE(limiter.muted("10.0.0.8", t0 + 5s));  // others are not
    REQUIRE_FALSE(limiter.muted("10.0.0.9", t0 + 100ms + 10s));
}

TEST_CASE("refusals spread over seconds never mute; limit 0 never mutes", "[refusal_limiter]") {
    RefusalLimiter limiter(2, 10.0);
    auto t = RefusalLimiter::Clock::time_point{} + 1000s;
    for (int i = 0; i < 20; ++i, t += 600ms) REQUIRE_FALSE(limiter.refused("peer", t));
    RefusalLimiter off(0, 10.0);
    for (int i = 0; i < 1000; ++i) REQUIRE_FALSE(off.refused("peer", t));
    REQUIRE_FALSE(off.muted("peer", t));
}

TEST_CASE("a flood of addresses does not grow the table past its bound", "[refusal_limiter]") {
    RefusalLimiter limiter(1, 10.0);
    auto t = RefusalLimiter::Clock::time_point{} + 1000s;
    for (int i = 0; i < 20000; ++i) {
        limiter.refused("10." + std::to_string(i), t);
        if (i % 1000 == 0) t += 2s;
    }
    REQUIRE(limiter.tracked() <= RefusalLimiter::max_peers);
}

TEST_CASE("failed ZMTP handshakes map to reason codes", "[handshake_monitor]") {
    using dpengine::HandshakeMonitor;
    REQUIRE(HandshakeMonitor::reason_code(ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL, 0) ==
            dpengine::Reason::handshake_incomplete);
    REQUIRE(HandshakeMonitor::reason_code(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL,
                                          ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) ==
            dpengine::Reason::mechanism_mismatch);
    REQUIRE(HandshakeMonitor::reason_code(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) ==
            dpengine::Reason::curve_handshake_failed);
    REQUIRE(HandshakeMonitor::reason_code(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL,
                                          ZMQ_PROTOCOL_ERROR_ZMTP_UNEXPECTED_COMMAND) ==
            dpengine::Reason::protocol_error);
    // ZAP refusals are the ZAP handler's to count.
    REQUIRE(HandshakeMonitor::reason_code(ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, 400) == std::nullopt);
    REQUIRE(HandshakeMonitor::reason_code(ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL, ZMQ_PROTOCOL_ERROR_ZAP_BAD_VERSION) ==
            std::nullopt);
}

TEST_CASE("one log line per reason per interval, the next one counting those left out", "[log_throttle]") {
    using dpengine::LogThrottle;
    LogThrottle throttle;
    auto t = LogThrottle::Clock::time_point{} + 1000s;
    REQUIRE(throttle.admit("unauthorized-key", t) == 0u);
    for (int i = 0; i < 2999; ++i) REQUIRE_FALSE(throttle.admit("unauthorized-key", t + 3ms * i).has_value());
    REQUIRE(throttle.admit("mechanism-mismatch", t + 1s) == 0u);  // each reason on its own
    REQUIRE_FALSE(throttle.admit("unauthorized-key", t + 9999ms).has_value());
    REQUIRE(throttle.admit("unauthorized-key", t + 10s) == 3000u);  // the 2999 and the one at 9.999 s
    REQUIRE_FALSE(throttle.admit("unauthorized-key", t + 11s).has_value());
    REQUIRE(throttle.admit("unauthorized-key", t + 60s) == 1u);
    // Several events at once: one line for all of them.
    REQUIRE(throttle.admit("registration-timeout", t, 300) == 299u);
    REQUIRE_FALSE(throttle.admit("registration-timeout", t + 1s, 50).has_value());
    REQUIRE(throttle.admit("registration-timeout", t + 10s, 2) == 51u);
    REQUIRE(LogThrottle::suppressed_note(0).empty());
    REQUIRE(LogThrottle::suppressed_note(3000) == " (3000 more suppressed since the last line for this reason)");
}
