#include "core/log.hpp"

#include <catch2/catch.hpp>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

using dpengine::log::Level;
namespace dlog = dpengine::log;

namespace {

// A datagram socket standing in for journald's, bound in a temporary directory.
struct FakeJournal {
    std::string dir, path;
    int fd = -1;
    FakeJournal() {
        char tmpl[] = "/tmp/dpe-journal-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        dir = tmpl;
        path = dir + "/socket";
        fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        std::strcpy(address.sun_path, path.c_str());
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    }
    ~FakeJournal() {
        ::close(fd);
        ::unlink(path.c_str());
        ::rmdir(dir.c_str());
    }
    std::string receive() const {
        std::string buffer(65536, '\0');
        ssize_t n = ::recv(fd, buffer.data(), buffer.size(), MSG_DONTWAIT);
        REQUIRE(n >= 0);
        buffer.resize(static_cast<size_t>(n));
        return buffer;
    }
};

}  // namespace

// SYSLOG_IDENTIFIER is the program's name: dpengine-unit-tests here, dpengined or dpengine-rank
// in the service.
const std::string program = program_invocation_short_name;

TEST_CASE("a journal entry carries the message, priority, program and unit as native-protocol fields", "[log]") {
    FakeJournal journal;
    REQUIRE(dlog::send_journal_entry(journal.path, dlog::journal_entry(Level::warning, "rank 3", "lost the head")));
    CHECK(journal.receive() ==
          "MESSAGE=lost the head\nPRIORITY=4\nSYSLOG_IDENTIFIER=" + program + "\nDPENGINE_UNIT=rank 3\n");
}

TEST_CASE("a message that ends with a reason code in brackets carries it as DPENGINE_REASON", "[log]") {
    FakeJournal journal;
    const std::string message = "rank 1 (node 'b') went silent: no heartbeat for 1.5 s [heartbeat-timeout]";
    REQUIRE(dlog::send_journal_entry(journal.path, dlog::journal_entry(Level::error, "dpengined", message)));
    CHECK(journal.receive() ==
          "MESSAGE=" + message + "\nPRIORITY=3\nSYSLOG_IDENTIFIER=" + program +
              "\nDPENGINE_UNIT=dpengined\nDPENGINE_REASON=heartbeat-timeout\n");
}

TEST_CASE("only a trailing, well-formed bracketed code is a reason code", "[log]") {
    CHECK(dlog::reason_code("the head is back [head-back]") == "head-back");
    CHECK(dlog::reason_code("rank 2 [rank-exited] and more").empty());  // not at the end
    CHECK(dlog::reason_code("a list [1, 2]").empty());                  // not a code
    CHECK(dlog::reason_code("an empty []").empty());
    CHECK(dlog::reason_code("]").empty());
    CHECK(dlog::reason_code("").empty());
}

TEST_CASE("a message with a newline is sent in the binary field form with its length", "[log]") {
    FakeJournal journal;
    const std::string message = "first line\nsecond line";
    REQUIRE(dlog::send_journal_entry(journal.path, dlog::journal_entry(Level::error, "dpengined", message)));
    std::string expected = "MESSAGE\n";
    expected += std::string("\x16\0\0\0\0\0\0\0", 8);  // 22, little-endian
    expected += message + "\nPRIORITY=3\nSYSLOG_IDENTIFIER=" + program + "\nDPENGINE_UNIT=dpengined\n";
    CHECK(journal.receive() == expected);
}

TEST_CASE("an entry for a journal socket that is not there is reported as not sent", "[log]") {
    CHECK_FALSE(
        dlog::send_journal_entry("/tmp/dpe-no-such-journal/socket", dlog::journal_entry(Level::info, "x", "y")));
    CHECK_FALSE(dlog::send_journal_entry(std::string(200, 'a'), "MESSAGE=y\n"));  // longer than sun_path
}
