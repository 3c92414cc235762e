#include "log.hpp"

#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
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

void write(Level level, std::string_view message) {
    State& s = state();
    std::lock_guard lock(s.mutex);
    if (static_cast<int>(level) > static_cast<int>(s.min_level)) return;
    if (s.journal) {
        sd_journal_send("MESSAGE=%.*s", static_cast<int>(message.size()), message.data(),
                        "PRIORITY=%d", static_cast<int>(level), "DPENGINE_UNIT=%s",
                        s.identity.c_str(), nullptr);
        return;
    }
    std::string line = fmt::format("{}: {}: {}\n", s.identity, level_name(level), message);
    (void)!::write(STDERR_FILENO, line.data(), line.size());
}

}  // namespace dpengine::log
