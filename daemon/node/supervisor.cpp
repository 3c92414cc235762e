#include "supervisor.hpp"

#include "core/log.hpp"

#include <boost/asio/post.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

namespace dpengine {

namespace asio = boost::asio;

struct Supervisor::Child {
    Child(asio::io_context& io, uint32_t rank, pid_t pid, int pidfd) : rank(rank), pid(pid), watcher(io, pidfd) {}
    uint32_t rank;
    pid_t pid;
    asio::posix::stream_descriptor watcher;  // owns the pidfd
};

std::string ProcessExit::describe() const {
    if (signal) {
        const char* name = sigabbrev_np(signal);
        return std::string("killed by signal ") + (name ? name : std::to_string(signal));
    }
    return "exited with status " + std::to_string(exit_status);
}

Supervisor::Supervisor(asio::io_context& io, ExitHandler on_exit)
    : io_(io), on_exit_(std::move(on_exit)), kill_timer_(io) {}

Supervisor::~Supervisor() {
    for (auto& [rank, child] : children_) {
        ::kill(child->pid, SIGKILL);
        ::waitpid(child->pid, nullptr, 0);
    }
}

Result<pid_t> Supervisor::spawn(uint32_t rank, const std::vector<std::string>& argv) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);

    // vfork: the daemon's thread waits only until the child has exec'd (no copy of the daemon's
    // address space, so spawning 256 ranks is not 256 page-table copies), and a failed exec
    // reports its errno through the memory the two share until then.
    volatile int exec_errno = 0;
    const pid_t parent = ::getpid();
    pid_t pid = ::vfork();
    if (pid < 0) return Error{std::string("cannot start rank process: vfork: ") + std::strerror(errno)};
    if (pid == 0) {
        // Only plain system calls from here to exec: the child borrows the daemon's memory.
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (::getppid() != parent) ::_exit(127);  // the daemon died before prctl took effect
        sigset_t all;
        sigemptyset(&all);
        ::sigprocmask(SIG_SETMASK, &all, nullptr);
        ::setpgid(0, 0);  // the rank and anything it starts form one group, stopped together
        // Nothing of the daemon's (HTTP listener, client connections, sockets) leaks into it.
        ::syscall(SYS_close_range, 3u, ~0u, 0u);
        ::execv(args[0], args.data());
        exec_errno = errno;
        ::_exit(127);
    }
    ::setpgid(pid, pid);  // from this side too, as ChildProcess::start does (child_process.cpp)
    if (exec_errno != 0) {
        ::waitpid(pid, nullptr, 0);
        return Error{"cannot run the engine program " + argv[0] + ": " + std::strerror(exec_errno) +
                     "; set daemon.engine_program"};
    }
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (pidfd < 0) {
        int err = errno;
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        return Error{std::string("pidfd_open: ") + std::strerror(err) + " (Linux 5.3 or newer is required)"};
    }
    auto child = std::make_unique<Child>(io_, rank, pid, pidfd);
    watch(*child);
    children_[rank] = std::move(child);
    return pid;
}

void Supervisor::watch(Child& child) {
    child.watcher.async_wait(asio::posix::stream_descriptor::wait_read,
                             [this, rank = child.rank](const boost::system::error_code& ec) {
                                 if (!ec) reaped(rank);
                             });
}

void Supervisor::reaped(uint32_t rank) {
    auto it = children_.find(rank);
    if (it == children_.end()) return;
    Child& child = *it->second;
    int status = 0;
    pid_t r = ::waitpid(child.pid, &status, WNOHANG);
    if (r == 0) {  // spurious wake-up: still running
        watch(child);
        return;
    }
    ProcessExit exit;
    exit.rank = rank;
    exit.pid = child.pid;
    if (r > 0 && WIFSIGNALED(status)) exit.signal = WTERMSIG(status);
    else if (r > 0) exit.exit_status = WEXITSTATUS(status);
    children_.erase(it);
    on_exit_(exit);
    if (children_.empty() && all_stopped_) {
        kill_timer_.cancel();
        auto done = std::move(all_stopped_);
        all_stopped_ = nullptr;
        done();
    }
}

void Supervisor::signal(uint32_t rank, int sig) {
    if (auto it = children_.find(rank); it != children_.end()) ::kill(it->second->pid, sig);
}

void Supervisor::stop_all(std::chrono::milliseconds grace, std::function<void()> done) {
    if (children_.empty()) {
        asio::post(io_, std::move(done));
        return;
    }
    all_stopped_ = std::move(done);
    for (auto& [rank, child] : children_) ::kill(child->pid, SIGTERM);
    kill_timer_.expires_after(grace);
    kill_timer_.async_wait([this, grace](const boost::system::error_code& ec) {
        if (ec) return;
        for (auto& [rank, child] : children_) {
            log::warning("rank {} (pid {}) did not stop within {} ms of SIGTERM; killing it", rank, child->pid,
                         grace.count());
            ::kill(-child->pid, SIGKILL);
            ::kill(child->pid, SIGKILL);
        }
    });
}

pid_t Supervisor::pid_of(uint32_t rank) const {
    auto it = children_.find(rank);
    return it == children_.end() ? 0 : it->second->pid;
}

std::string find_engine_program(const std::string& configured) {
    if (!configured.empty()) return configured;
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) {
        auto beside = self.parent_path() / "dpengine-rank";
        if (::access(beside.c_str(), X_OK) == 0) return beside;
    }
    return std::string(DPENGINE_LIBEXECDIR) + "/dpengine-rank";
}

}  // namespace dpengine
