// Spawns and watches this node's rank processes. Each rank is a separate program (not a fork
// of the multi-threaded daemon) started with PR_SET_PDEATHSIG, so no rank outlives the daemon
// even when the daemon is killed with SIGKILL. Exits are noticed through pidfds on the
// daemon's event loop.
#pragma once

#include "core/error.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace dpengine {

struct ProcessExit {
    uint32_t rank = 0;
    pid_t pid = 0;
    int exit_status = -1;          // the exit code, or -1 when killed by a signal
    int signal = 0;                // the signal that killed it, or 0
    std::string describe() const;  // "exited with status 78" / "killed by signal KILL"
};

class Supervisor {
public:
    using ExitHandler = std::function<void(const ProcessExit&)>;

    Supervisor(boost::asio::io_context& io, ExitHandler on_exit);
    ~Supervisor();  // kills and reaps whatever still runs
    Supervisor(const Supervisor&) = delete;
    Supervisor& operator=(const Supervisor&) = delete;

    // Starts argv[0] with argv for `rank`. Fails if the program cannot be executed.
    Result<pid_t> spawn(uint32_t rank, const std::vector<std::string>& argv);
    void signal(uint32_t rank, int sig);
    // SIGTERM to every rank, SIGKILL to those still running after `grace`; `done` runs once
    // all have exited.
    void stop_all(std::chrono::milliseconds grace, std::function<void()> done);
    size_t running() const { return children_.size(); }
    // The running process of `rank`; 0 when it has none.
    pid_t pid_of(uint32_t rank) const;

private:
    struct Child;
    void watch(Child& child);
    void reaped(uint32_t rank);

    boost::asio::io_context& io_;
    ExitHandler on_exit_;
    std::map<uint32_t, std::unique_ptr<Child>> children_;
    std::function<void()> all_stopped_;
    boost::asio::steady_timer kill_timer_;
};

// The engine rank program: `configured` if set, else dpengine-rank next to this executable
// (a build tree), else the installed one in the libexec directory.
std::string find_engine_program(const std::string& configured);

}  // namespace dpengine
