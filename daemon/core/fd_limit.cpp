#include "fd_limit.hpp"

#include <sys/resource.h>

#include <limits>

namespace dpengine {
namespace {

uint64_t as_count(rlim_t value) {
    return value == RLIM_INFINITY ? std::numeric_limits<uint64_t>::max() : static_cast<uint64_t>(value);
}

}  // namespace

uint64_t raise_open_file_limit() {
    struct rlimit limit {};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
    if (limit.rlim_cur != limit.rlim_max) {
        struct rlimit raised = limit;
        raised.rlim_cur = limit.rlim_max;
        if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
    }
    return as_count(limit.rlim_cur);
}

uint64_t open_file_limit() {
    struct rlimit limit {};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
    return as_count(limit.rlim_cur);
}

}  // namespace dpengine
