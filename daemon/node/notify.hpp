// The service manager notification protocol (sd_notify): READY=1, STATUS=, STOPPING=1 and
// the watchdog. Does nothing when $NOTIFY_SOCKET is unset, so the daemon runs the same way
// under systemd, under a test that provides the socket, and by hand.
#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace dpengine::notify {

void ready();
void status(std::string_view text);
void stopping();
void watchdog();
// The interval at which watchdog() must be called, when the service manager asked for one.
std::optional<std::chrono::microseconds> watchdog_interval();

}  // namespace dpengine::notify
