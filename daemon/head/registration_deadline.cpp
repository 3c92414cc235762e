#include "registration_deadline.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/un.h>

#include <cstring>

namespace dpengine {

bool RegistrationDeadline::Addresses::operator==(const Addresses& other) const {
    return local_size == other.local_size && remote_size == other.remote_size &&
        std::memcmp(&local, &other.local, local_size) == 0 && std::memcmp(&remote, &other.remote, remote_size) == 0;
}

RegistrationDeadline::Addresses RegistrationDeadline::addresses_of(int fd) {
    Addresses a;
    a.local_size = a.remote_size = sizeof(sockaddr_storage);
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&a.local), &a.local_size) != 0) a.local_size = 0;
    if (getpeername(fd, reinterpret_cast<sockaddr*>(&a.remote), &a.remote_size) != 0) a.remote_size = 0;
    return a;
}

std::string RegistrationDeadline::describe(const Addresses& a) {
    char text[INET6_ADDRSTRLEN] = "";
    if (a.remote_size && a.remote.ss_family == AF_INET) {
        const auto& in = reinterpret_cast<const sockaddr_in&>(a.remote);
        inet_ntop(AF_INET, &in.sin_addr, text, sizeof text);
        return std::string(text) + ":" + std::to_string(ntohs(in.sin_port));
    }
    if (a.remote_size && a.remote.ss_family == AF_INET6) {
        const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a.remote);
        inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof text);
        return "[" + std::string(text) + "]:" + std::to_string(ntohs(in6.sin6_port));
    }
    if (a.local_size && a.local.ss_family == AF_UNIX) {
        return "a local process on " + std::string(reinterpret_cast<const sockaddr_un&>(a.local).sun_path);
    }
    return "an unknown peer";
}

void RegistrationDeadline::accepted(int fd, Clock::time_point now) {
    pending_.insert_or_assign(fd, Pending{now, addresses_of(fd)});
}

std::vector<std::string> RegistrationDeadline::expire(Clock::time_point now, Clock::duration limit) {
    std::vector<std::string> closed;
    for (auto it = pending_.begin(); it != pending_.end();) {
        if (now - it->second.accepted_at < limit) {
            ++it;
            continue;
        }
        if (addresses_of(it->first) == it->second.addresses) {
            ::shutdown(it->first, SHUT_RDWR);
            closed.push_back(describe(it->second.addresses));
        }
        it = pending_.erase(it);
    }
    return closed;
}

}  // namespace dpengine
