#include "private_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace dpengine {

std::string mode_text(mode_t mode) {
    char text[8];
    std::snprintf(text, sizeof text, "%04o", static_cast<unsigned>(mode & 07777));
    return text;
}

Result<std::string> read_private_file(const std::string& path, std::string_view what, size_t max_bytes) {
    const std::string name = std::string(what) + " " + path;
    // One descriptor for the check and the read, so the file checked is the file read.
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return Error{"cannot read " + name + ": " + std::strerror(errno)};
    struct Closer {
        int fd;
        ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0) return Error{"cannot read " + name + ": " + std::strerror(errno)};
    if (!S_ISREG(st.st_mode)) return Error{name + " is not a regular file"};
    if (st.st_mode & 027) {
        return Error{name + " can be " + ((st.st_mode & 020) || (st.st_mode & 002) ? "changed" : "read") +
                     " by others (mode " + mode_text(st.st_mode) + "); run 'chmod 600 " + path +
                     "' (or 640 when root owns it and the service's group reads it)"};
    }
    if (static_cast<uint64_t>(st.st_size) > max_bytes) {
        return Error{name + " is larger than " + std::to_string(max_bytes) + " bytes; is it the right file?"};
    }
    std::string text;
    char buf[8192];
    for (;;) {
        ssize_t n = ::read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return Error{"cannot read " + name + ": " + std::strerror(errno)};
        if (n == 0) break;
        text.append(buf, static_cast<size_t>(n));
        if (text.size() > max_bytes)
            return Error{name + " is larger than " + std::to_string(max_bytes) + " bytes; is it the right file?"};
    }
    return text;
}

}  // namespace dpengine
