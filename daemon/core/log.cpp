#include "log.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <cstring>
#include <mutex>

namespace dpengine::log {
namespace {

struct State {
    std::mutex mutex;
    std::string identity = "dpengine";
    Level min_level = Level::info;
    bool journal = false;
};

// $JOURNAL_STREAM is "DEV:INODE" of the journal's stream socket; stderr is the journal only
// when the fd still refers to that same file (not after a redirect).
bool stderr_is_journal() {
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (!stream) return false;
    unsigned long dev = 0, ino = 0;
    if (std::sscanf(stream, "%lu:%lu", &dev, &ino) != 2) return false;
    struct stat st {};
    if (fstat(STDERR_FILENO, &st) != 0) return false;
    return st.st_dev == dev && st.st_ino == ino;
}

State& state() {
    static State s;
    static const bool detected = (s.journal = stderr_is_journal(), true);
    (void)detected;
    return s;
}

const char* level_name(Level level) {
    switch (level) {
        case Level::error: return "error";
        case Level::warning: return "warning";
        case Level::notice: return "notice";
        case Level::info: return "info";
        case Level::debug: return "debug";
    }
    return "info";
}

}  // namespace

void set_identity(std::string identity) {
    std::lock_guard lock(state().mutex);
    state().identity = std::move(identity);
}

void set_min_level(Level level) {
    std::lock_guard lock(state().mutex);
    state().min_level = level;
}

std::string_view reason_code(std::string_view message) {
    if (message.size() < 3 || message.back() != ']') return {};
    size_t open = message.rfind('[');
    if (open == std::string_view::npos || open + 2 >= message.size()) return {};
    std::string_view code = message.substr(open + 1, message.size() - open - 2);
    bool well_formed = std::all_of(code.begin(), code.end(),
                                   [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; });
    return well_formed ? code : std::string_view{};
}

std::string journal_entry(Level level, std::string_view identity, std::string_view message) {
    std::string entry;
    auto field = [&entry](std::string_view name, std::string_view value) {
        entry += name;
        if (value.find('\n') == std::string_view::npos) {
            entry += '=';
        } else {  // the binary form: name, newline, 64-bit little-endian length, value
            entry += '\n';
            uint64_t size = value.size();
            for (int i = 0; i < 8; ++i) entry += static_cast<char>((size >> (8 * i)) & 0xff);
        }
        entry += value;
        entry += '\n';
    };
    field("MESSAGE", message);
    field("PRIORITY", std::to_string(static_cast<int>(level)));
    field("SYSLOG_IDENTIFIER", program_invocation_short_name);
    field("DPENGINE_UNIT", identity);
    if (auto code = reason_code(message); !code.empty()) field("DPENGINE_REASON", code);
    return entry;
}

bool send_journal_entry(const std::string& socket_path, const std::string& entry) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (socket_path.size() >= sizeof address.sun_path) return false;
    std::memcpy(address.sun_path, socket_path.c_str(), socket_path.size() + 1);
    static int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);  // one for the process
    if (fd < 0) return false;
    return ::sendto(fd, entry.data(), entry.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&address),
                    sizeof address) == static_cast<ssize_t>(entry.size());
}

void write(Level level, std::string_view message) {
    State& s = state();
    std::lock_guard lock(s.mutex);
    if (static_cast<int>(level) > static_cast<int>(s.min_level)) return;
    // journald's native protocol, spoken directly: the rank program then needs no libsystemd,
    // whose loading (with libgcrypt, liblzma, libzstd, liblz4, libcap) took a fifth of each
    // rank's start. An entry the journal does not take (too large for one datagram) goes to
    // stderr, which is the journal as well.
    if (s.journal && send_journal_entry(journal_socket, journal_entry(level, s.identity, message))) return;
    std::string line = fmt::format("{}: {}: {}\n", s.identity, level_name(level), message);
    (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace dpengine::log
