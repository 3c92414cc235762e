#include "child_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string_view>
#include <thread>
#include <utility>

namespace dpengine::engine {
namespace {

constexpr std::chrono::milliseconds default_grace{5000};

void close_fd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
}

// ARGV0 itself when it names a path, else the first executable of that name in PATH.
std::optional<std::string> resolve(const std::string& argv0, const std::vector<std::string>& environment) {
    if (argv0.find('/') != std::string::npos) return argv0;
    std::string_view path = "/usr/local/bin:/usr/bin:/bin";
    for (const auto& entry : environment)
        if (entry.rfind("PATH=", 0) == 0) path = std::string_view(entry).substr(5);
    while (true) {
        size_t colon = path.find(':');
        std::string dir(path.substr(0, colon));
        std::string candidate = (dir.empty() ? "." : dir) + "/" + argv0;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
        if (colon == std::string_view::npos) return std::nullopt;
        path.remove_prefix(colon + 1);
    }
}

// Waits until PIDFD is readable (the child exited) or TIMEOUT passes.
bool wait_exit(int pidfd, std::chrono::milliseconds timeout) {
    pollfd p{pidfd, POLLIN, 0};
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        int r = ::poll(&p, 1, static_cast<int>(std::max<int64_t>(0, left.count())));
        if (r > 0) return true;
        if (r == 0) return false;
        if (errno != EINTR) return false;
    }
}

bool group_exists(pid_t pgid) { return ::kill(-pgid, 0) == 0 || errno == EPERM; }

}  // namespace

Result<ChildProcess> ChildProcess::start(const std::vector<std::string>& argv,
                                         const std::vector<std::string>& environment) {
    if (argv.empty() || argv[0].empty()) return Error{"no program to run", "config"};
    auto program = resolve(argv[0], environment);
    if (!program) return Error{"'" + argv[0] + "' is not an executable found in PATH", "config"};
    std::vector<char*> args, envp;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    for (const auto& e : environment) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);

    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return Error{std::string("pipe: ") + std::strerror(errno)};
    if (::pipe2(err, O_CLOEXEC) != 0) {
        int e = errno;
        ::close(out[0]), ::close(out[1]);
        return Error{std::string("pipe: ") + std::strerror(e)};
    }
    int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);

    // vfork: as the node supervisor does (daemon/node/supervisor.cpp); the parent waits only
    // until exec, and a failed exec reports its errno through the shared memory.
    volatile int exec_errno = 0;
    const pid_t parent = ::getpid();
    pid_t pid = ::vfork();
    if (pid < 0) {
        int e = errno;
        ::close(out[0]), ::close(out[1]), ::close(err[0]), ::close(err[1]);
        if (null_fd >= 0) ::close(null_fd);
        return Error{std::string("vfork: ") + std::strerror(e)};
    }
    if (pid == 0) {
        // Only plain system calls from here to exec.
        ::setpgid(0, 0);  // a group of its own: stop() ends the server and its workers together
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (::getppid() != parent) ::_exit(127);  // the rank died before prctl took effect
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        if (null_fd >= 0) ::dup2(null_fd, STDIN_FILENO);
        ::dup2(out[1], STDOUT_FILENO);
        ::dup2(err[1], STDERR_FILENO);
        ::syscall(SYS_close_range, 3u, ~0u, 0u);
        ::execve(program->c_str(), args.data(), envp.data());
        exec_errno = errno;
        ::_exit(127);
    }
    // The group from this side as well: where vfork is only a fork (ThreadSanitizer builds)
    // the child may not have run yet. Once it has exec'd this fails (EACCES), and it was done.
    ::setpgid(pid, pid);
    ::close(out[1]), ::close(err[1]);
    if (null_fd >= 0) ::close(null_fd);
    if (exec_errno != 0) {
        ::waitpid(pid, nullptr, 0);
        ::close(out[0]), ::close(err[0]);
        return Error{"cannot run " + *program + ": " + std::strerror(exec_errno), "config"};
    }
    ChildProcess child;
    child.pid_ = pid;
    child.stdout_fd_ = out[0];
    child.stderr_fd_ = err[0];
    child.pidfd_ = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    if (child.pidfd_ < 0) {
        int e = errno;
        child.stop(std::chrono::milliseconds(0));
        return Error{std::string("pidfd_open: ") + std::strerror(e) + " (Linux 5.3 or newer is required)"};
    }
    return child;
}

ChildProcess::ChildProcess(ChildProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      pidfd_(std::exchange(other.pidfd_, -1)),
      stdout_fd_(std::exchange(other.stdout_fd_, -1)),
      stderr_fd_(std::exchange(other.stderr_fd_, -1)),
      wait_status_(other.wait_status_),
      stopped_(std::exchange(other.stopped_, true)) {}

ChildProcess::~ChildProcess() {
    stop(default_grace);
    close_fd(pidfd_);
    close_fd(stdout_fd_);
    close_fd(stderr_fd_);
}

std::optional<int> ChildProcess::reap() {
    if (wait_status_ || pid_ < 0) return wait_status_;
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) wait_status_ = status;
    return wait_status_;
}

void ChildProcess::signal_group(int sig) {
    if (pid_ > 0 && !stopped_ && group_exists(pid_)) ::kill(-pid_, sig);
}

void ChildProcess::stop(std::chrono::milliseconds grace) {
    if (stopped_ || pid_ < 0) return;
    stopped_ = true;
    // The group outlives its leader while any member runs (a server's worker processes): it
    // is signalled whether or not the leader is still there.
    if (group_exists(pid_)) ::kill(-pid_, SIGTERM);
    if (!wait_status_) {
        if (pidfd_ >= 0) wait_exit(pidfd_, grace);
        if (!reap()) {
            ::kill(-pid_, SIGKILL);
            ::kill(pid_, SIGKILL);
            int status = 0;
            if (::waitpid(pid_, &status, 0) == pid_) wait_status_ = status;
        }
    }
    // Members that ignored SIGTERM (or were started late) get SIGKILL once the grace is over.
    auto deadline = std::chrono::steady_clock::now() + grace;
    while (group_exists(pid_) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (group_exists(pid_)) ::kill(-pid_, SIGKILL);
}

std::string describe_wait_status(int wait_status) {
    if (WIFSIGNALED(wait_status)) {
        const char* name = sigabbrev_np(WTERMSIG(wait_status));
        return std::string("was killed by signal ") + (name ? name : std::to_string(WTERMSIG(wait_status)));
    }
    return "exited with status " + std::to_string(WEXITSTATUS(wait_status));
}

}  // namespace dpengine::engine
