// Logging to stderr, systemd style: when stderr is connected to the journal ($JOURNAL_STREAM
// names it) entries go to journald's native socket with a priority and structured fields;
// otherwise they are plain lines with a "<level>: " prefix a human can read.
#pragma once

#include <fmt/format.h>
#include <string>
#include <string_view>

namespace dpengine::log {

enum class Level { error = 3, warning = 4, notice = 5, info = 6, debug = 7 };

// Names this process in plain-text output ("dpengined", "rank 3"); journald has its own.
void set_identity(std::string identity);
void set_min_level(Level level);
void write(Level level, std::string_view message);

// journald's native protocol (systemd's "Native Journal Protocol"): one datagram of fields per
// entry: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER (the program's name, so that `journalctl -t
// dpengined` finds the daemon's lines), DPENGINE_UNIT (the identity: "dpengined", "rank 3")
// and, for a message that ends with a reason code in brackets ("... [heartbeat-timeout]"),
// DPENGINE_REASON with the code. Exposed for the tests.
inline constexpr const char* journal_socket = "/run/systemd/journal/socket";
std::string journal_entry(Level level, std::string_view identity, std::string_view message);
// The reason code a message ends with ("went silent ... [heartbeat-timeout]"), or "".
std::string_view reason_code(std::string_view message);
bool send_journal_entry(const std::string& socket_path, const std::string& entry);

template <class... A>
void error(fmt::format_string<A...> f, A&&... a) {
    write(Level::error, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void warning(fmt::format_string<A...> f, A&&... a) {
    write(Level::warning, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void notice(fmt::format_string<A...> f, A&&... a) {
    write(Level::notice, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void info(fmt::format_string<A...> f, A&&... a) {
    write(Level::info, fmt::format(f, std::forward<A>(a)...));
}
template <class... A>
void debug(fmt::format_string<A...> f, A&&... a) {
    write(Level::debug, fmt::format(f, std::forward<A>(a)...));
}

}  // namespace dpengine::log
