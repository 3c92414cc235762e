// Exit codes of dpengined and dpengine-rank (documented in dpengined(8)). The unit excludes
// the non-retryable ones from Restart=, and the supervisor does not restart a rank that used
// one: running it again would fail the same way.
#pragma once

namespace dpengine::exit_code {

inline constexpr int ok = 0;
inline constexpr int failure = 1;       // a runtime failure; retrying may help
inline constexpr int usage = 2;         // bad command line
inline constexpr int unreachable = 75;  // rank: the head did not answer in time (EX_TEMPFAIL)
inline constexpr int refused = 77;      // rank: the head refused this rank (EX_NOPERM)
inline constexpr int config = 78;       // bad configuration (EX_CONFIG)

}  // namespace dpengine::exit_code
