#include "runtime_dir.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>

namespace dpengine {
namespace {

constexpr const char* lock_name = "dpengined.lock";

std::string errno_text() { return std::strerror(errno); }

}  // namespace

RuntimeDir::RuntimeDir(std::string path, int lock_fd, bool created)
    : path_(std::move(path)), lock_fd_(lock_fd), created_(created) {}

RuntimeDir::RuntimeDir(RuntimeDir&& other) noexcept
    : path_(std::move(other.path_)), lock_fd_(other.lock_fd_), created_(other.created_) {
    other.lock_fd_ = -1;
    other.created_ = false;
}

RuntimeDir::~RuntimeDir() {
    if (lock_fd_ < 0) return;
    ::unlink((path_ + "/" + lock_name).c_str());
    ::close(lock_fd_);
    if (created_) {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }
}

Result<RuntimeDir> RuntimeDir::open(const std::string& configured) {
    std::string path = configured;
    bool created = false;
    if (path.empty()) {
        if (const char* rd = std::getenv("RUNTIME_DIRECTORY"); rd && *rd) {
            // systemd may list several directories separated by ':'; ours is the first.
            path = std::string(rd).substr(0, std::string(rd).find(':'));
        } else if (::geteuid() == 0) {
            path = "/run/dpengine";
        } else {
            const char* base = std::getenv("XDG_RUNTIME_DIR");
            std::string tmpl = std::string(base && *base ? base : "/tmp") + "/dpengine.XXXXXX";
            if (!::mkdtemp(tmpl.data())) {
                return Error{"cannot create a runtime directory " + tmpl + ": " + errno_text() +
                             "; set daemon.runtime_directory"};
            }
            path = tmpl;
            created = true;
        }
    }
    if (!created) {
        if (::mkdir(path.c_str(), 0750) == 0) {
            created = true;
        } else if (errno != EEXIST) {
            return Error{"cannot create runtime directory " + path + ": " + errno_text() +
                         "; set daemon.runtime_directory to a writable place"};
        }
    }
    std::string lock_path = path + "/" + lock_name;
    int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return Error{"cannot open " + lock_path + ": " + errno_text()};
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        ::close(fd);
        return Error{"another dpengined is using the runtime directory " + path +
                     "; stop it or give this one its own daemon.runtime_directory"};
    }
    return RuntimeDir(path, fd, created);
}

}  // namespace dpengine
