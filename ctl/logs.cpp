// dpctl logs RANK [-f] [-n N]: that rank's lines from the systemd journal. A rank process logs
// through sd_journal_send with DPENGINE_UNIT="rank N" when the daemon runs under systemd, so
// journalctl picks them out by that field. Without journald the daemon and its ranks log to
// the daemon's standard error instead, and there is nothing for dpctl to read.
#include "verb_table.hpp"

#include <grp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

extern char** environ;

namespace dpctl {

namespace {

constexpr const char* unit = "dpengined.service";

std::string without_journal_hint(uint32_t rank) {
    return "without journald, dpengined and its ranks log to dpengined's standard error, where rank " +
        std::to_string(rank) + "'s lines start with 'rank " + std::to_string(rank) + ":'";
}

// The groups journald lets read the system journal: systemd-journal, and by the ACLs of
// systemd's tmpfiles.d (and Debian's) adm and wheel.
constexpr const char* journal_groups[] = {"systemd-journal", "adm", "wheel"};

// Whether this user may read the system journal, where the service's lines are. Anyone else
// gets only their own user journal from journalctl: "-- No entries --", and status 0.
bool may_read_system_journal() {
    if (geteuid() == 0) return true;
    int n = getgroups(0, nullptr);
    std::vector<gid_t> groups(n > 0 ? static_cast<size_t>(n) : 0);
    if (n > 0 && getgroups(n, groups.data()) < 0) groups.clear();
    groups.push_back(getegid());
    for (const char* name : journal_groups) {
        const group* g = getgrnam(name);
        if (g && std::find(groups.begin(), groups.end(), g->gr_gid) != groups.end()) return true;
    }
    return false;
}

}  // namespace

int logs_verb(Invocation& in) {
    const Options& options = in.options;
    const uint32_t rank = parse_rank("logs", in.args[0]);
    if (!may_read_system_journal()) {
        throw Failure(exit_status::access_denied,
                      "this user may not read the system journal, where dpengined and its ranks log (journalctl "
                      "would show no entries): run 'dpctl logs' as root, or as a member of the group "
                      "'systemd-journal' (or 'adm')");
    }
    const bool journald = access("/run/systemd/journal/socket", F_OK) == 0;
    if (!journald) {
        std::fprintf(stderr, "dpctl: note: journald does not seem to run on this machine; %s\n",
                     without_journal_hint(rank).c_str());
    }
    const std::string hint = journald ? "; " + without_journal_hint(rank) : "";
    std::vector<std::string> argv = {"journalctl", "--no-pager", "--output=short-precise",
                                     std::string("_SYSTEMD_UNIT=") + unit,
                                     "DPENGINE_UNIT=rank " + std::to_string(rank)};
    if (options.follow) argv.push_back("--follow");
    if (options.lines) argv.push_back("--lines=" + std::to_string(*options.lines));
    std::vector<char*> cargv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);

    // journalctl gets Ctrl-C (ending --follow); dpctl waits for it and reports how it ended.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t defaults;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
    pid_t pid = 0;
    int err = posix_spawnp(&pid, "journalctl", nullptr, &attr, cargv.data(), environ);
    posix_spawnattr_destroy(&attr);
    if (err != 0) {
        throw Failure(exit_status::failure,
                      std::string("cannot run journalctl (") + std::strerror(err) +
                          "): rank logs are read from the systemd journal" + hint);
    }
    struct sigaction ignore {
    }, old_int{};
    ignore.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ignore, &old_int);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    sigaction(SIGINT, &old_int, nullptr);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return exit_status::ok;
    if (WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) return exit_status::ok;  // Ctrl-C ended --follow
    throw Failure(exit_status::failure,
                  "journalctl " +
                      std::string(WIFEXITED(status) ? "exited with status " + std::to_string(WEXITSTATUS(status))
                                                    : "was killed by signal " + std::to_string(WTERMSIG(status))) +
                      " reading rank " + std::to_string(rank) + "'s log" + hint);
}

}  // namespace dpctl
