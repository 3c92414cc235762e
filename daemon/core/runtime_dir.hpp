// The directory that holds this daemon's ipc:// sockets. Only the service user can enter it,
// and a lock inside it keeps two daemons from sharing one.
#pragma once

#include "error.hpp"

#include <string>

namespace dpengine {

class RuntimeDir {
public:
    // Chooses the directory: `configured` if set, else $RUNTIME_DIRECTORY (set by systemd),
    // else /run/dpengine for root, else a new private directory under $XDG_RUNTIME_DIR or
    // /tmp. Takes its lock; fails if another daemon holds it.
    static Result<RuntimeDir> open(const std::string& configured);

    RuntimeDir(RuntimeDir&& other) noexcept;
    RuntimeDir& operator=(RuntimeDir&&) = delete;
    ~RuntimeDir();  // removes the lock and, if this process created the directory, the directory

    const std::string& path() const { return path_; }

private:
    RuntimeDir(std::string path, int lock_fd, bool created);
    std::string path_;
    int lock_fd_ = -1;
    bool created_ = false;
};

}  // namespace dpengine
