// Exit statuses of dpctl (documented in --help and dpctl(1), EXIT STATUS). In the core so that
// the reason table (core/reason.hpp) can say which one each of the daemon's answers gives;
// dpctl names them exit_status (ctl/verbs.hpp).
#pragma once

namespace dpengine::dpctl_exit {

inline constexpr int ok = 0;
inline constexpr int failure = 1;            // the operation failed or did not complete in time
inline constexpr int invalid_arguments = 2;  // bad command line; nothing was asked of the daemon
inline constexpr int not_running = 3;        // no org.dpengine1 on the system bus, or no bus
inline constexpr int access_denied = 4;      // the caller may not do this
inline constexpr int rejected = 5;           // the daemon refused the request as invalid

}  // namespace dpengine::dpctl_exit
