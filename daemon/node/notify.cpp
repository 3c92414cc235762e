#include "notify.hpp"

#include <systemd/sd-daemon.h>

#include <string>

namespace dpengine::notify {

void ready() { sd_notify(0, "READY=1"); }

void status(std::string_view text) { sd_notify(0, ("STATUS=" + std::string(text)).c_str()); }

void stopping() { sd_notify(0, "STOPPING=1"); }

void watchdog() { sd_notify(0, "WATCHDOG=1"); }

std::optional<std::chrono::microseconds> watchdog_interval() {
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::nullopt;
    return std::chrono::microseconds(usec);
}

}  // namespace dpengine::notify
