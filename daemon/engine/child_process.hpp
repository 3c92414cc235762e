// One child program in a process group of its own, owned RAII-style: it is started with
// PR_SET_PDEATHSIG (it gets SIGTERM if the rank dies without cleaning up), its stdout and
// stderr come back through pipes, and stop() (also run by the destructor) sends SIGTERM to the
// whole group, then SIGKILL after a grace period, so that nothing it started keeps running
// (or keeps GPU memory) after the rank.
#pragma once

#include "core/error.hpp"

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dpengine::engine {

class ChildProcess {
public:
    // Runs ARGV (argv[0] is looked up in the PATH of ENVIRONMENT when it has no '/') with
    // exactly ENVIRONMENT ("NAME=value" entries) and stdin from /dev/null. Errors name the
    // program and why it could not be run.
    static Result<ChildProcess> start(const std::vector<std::string>& argv,
                                      const std::vector<std::string>& environment);

    ChildProcess(ChildProcess&& other) noexcept;
    ChildProcess& operator=(ChildProcess&&) = delete;
    ChildProcess(const ChildProcess&) = delete;
    ~ChildProcess();

    pid_t pid() const { return pid_; }
    // A pidfd for the child: readable once it has exited. Stays owned by this object.
    int pidfd() const { return pidfd_; }
    // The read ends of the child's stdout and stderr; the caller owns what it takes.
    int take_stdout() { return std::exchange(stdout_fd_, -1); }
    int take_stderr() { return std::exchange(stderr_fd_, -1); }

    // Reaps the child if it has exited: its wait status, else nothing (it still runs).
    std::optional<int> reap();
    // Sends SIG to the child's whole process group (while any of it runs).
    void signal_group(int sig);
    // Stops the whole process group: SIGTERM, then SIGKILL to what is left after GRACE.
    void stop(std::chrono::milliseconds grace);

private:
    ChildProcess() = default;

    pid_t pid_ = -1;
    int pidfd_ = -1;
    int stdout_fd_ = -1;
    int stderr_fd_ = -1;
    std::optional<int> wait_status_;
    bool stopped_ = false;
};

// "exited with status 3" / "was killed by signal KILL".
std::string describe_wait_status(int wait_status);

}  // namespace dpengine::engine
