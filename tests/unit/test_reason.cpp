// The reason-code table (core/reason.hpp) against itself and against dpengined(8), REASON
// CODES, which must list every code of the table with what the table says of it, and no other.
#include "core/error.hpp"
#include "core/reason.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

using namespace dpengine;

namespace {

// The page's REASON CODES section: code -> its text (the tab-indented lines after "*code*").
std::map<std::string, std::string> documented_reasons() {
    std::ifstream page(DPENGINE_SOURCE_DIR "/man/dpengined.8.scd");
    REQUIRE(page.good());
    std::map<std::string, std::string> out;
    std::string line, current;
    bool inside = false;
    const std::regex term(R"(^\*([a-z0-9-]+)\*$)");
    while (std::getline(page, line)) {
        if (line.rfind("# ", 0) == 0) {
            inside = line == "# REASON CODES";
            current.clear();
            continue;
        }
        if (!inside) continue;
        std::smatch m;
        if (std::regex_match(line, m, term)) {
            current = m[1];
            REQUIRE(out.count(current) == 0);  // listed once
            out[current];
        } else if (!current.empty() && !line.empty() && line[0] == '\t') {
            out[current] += line.substr(1) + " ";
        } else if (line.empty()) {
            current.clear();
        }
    }
    return out;
}

}  // namespace

TEST_CASE("reason codes are unique words that round-trip", "[reason]") {
    std::set<std::string_view> codes, bus_errors;
    const std::regex word("[a-z]+(-[a-z0-9]+)*");
    for (const auto& e : reasons) {
        INFO(e.code);
        CHECK(codes.insert(e.code).second);
        CHECK(std::regex_match(std::string(e.code), word));
        CHECK(!e.meaning.empty());
        CHECK(reason_from_code(e.code) == e.reason);
        CHECK(code(e.reason) == e.code);
        if (!e.bus_error.empty()) {
            CHECK(bus_errors.insert(e.bus_error).second);  // dpctl maps each error back to one code
            CHECK(reason_from_bus_error(e.bus_error) == e.reason);
        }
    }
    CHECK(reason_from_code("no-such-code") == std::nullopt);
    CHECK(reason_from_bus_error("org.freedesktop.DBus.Error.ServiceUnknown") == std::nullopt);
}

TEST_CASE("control answers give the exit statuses dpctl(1) documents", "[reason]") {
    CHECK(entry(Reason::invalid_rank).bus_error == "org.dpengine1.Error.InvalidRank");
    CHECK(entry(Reason::invalid_rank).dpctl_exit == dpctl_exit::rejected);
    CHECK(entry(Reason::bad_state).dpctl_exit == dpctl_exit::rejected);
    CHECK(entry(Reason::not_local).dpctl_exit == dpctl_exit::rejected);
    CHECK(entry(Reason::failed).dpctl_exit == dpctl_exit::failure);
    CHECK(entry(Reason::denied).dpctl_exit == dpctl_exit::access_denied);
    CHECK(entry(Reason::duplicate_rank).bus_error.empty());
}

TEST_CASE("an Error's code is the table's, and reads back as its reason", "[reason]") {
    Error e{"rank 9 does not exist", "invalid-rank"};
    CHECK(e.code == "invalid-rank");
    CHECK(e.reason() == Reason::invalid_rank);
    CHECK(Error{"no code"}.reason() == Reason::failed);
    CHECK(Error{"typed", Reason::group_stalled}.code == "group-stalled");
}

TEST_CASE("dpengined(8) lists every reason code of the table and no other", "[reason][manpages]") {
    const auto documented = documented_reasons();
    for (const auto& e : reasons) {
        const std::string code(e.code);
        INFO("reason code " << code);
        REQUIRE(documented.count(code) == 1);
        const std::string& text = documented.at(code);
        if (!e.bus_error.empty()) {
            CHECK(text.find("*" + std::string(e.bus_error) + "*") != std::string::npos);
            CHECK(text.find("exits with " + std::to_string(e.dpctl_exit)) != std::string::npos);
        } else {
            CHECK(text.find("D-Bus") == std::string::npos);
        }
        CHECK((text.find("Trying again can succeed") != std::string::npos) == e.retryable);
    }
    for (const auto& [code, text] : documented) {
        INFO("documented reason code " << code);
        CHECK(reason_from_code(code).has_value());
    }
}
