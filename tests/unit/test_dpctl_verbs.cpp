// Unit tests for dpctl's verb table (ctl/verb_table.hpp): every verb dispatches, argument
// counts outside a row's bounds are refused with exit status 2 before any bus call, unknown
// verbs are refused, and the commands of `dpctl --help` and man/dpctl.1.scd are the table's.
#include "ctl/options.hpp"
#include "ctl/run.hpp"
#include "ctl/verb_table.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace dpctl;

namespace {

// dpctl's exit status for `args` (after "dpctl").
int run_dpctl(std::vector<std::string> args) {
    args.insert(args.begin(), "dpctl");
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    return run(static_cast<int>(args.size()), argv.data());
}

// $DBUS_SYSTEM_BUS_ADDRESS pointing where no bus listens, for the life of the object: a verb
// that reaches the bus exits 3 (not running); one refused before exits 2.
struct NoBus {
    std::optional<std::string> saved;
    NoBus() {
        if (const char* old = std::getenv("DBUS_SYSTEM_BUS_ADDRESS")) saved = old;
        setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/dpctl-unit-test-bus", 1);
    }
    ~NoBus() {
        if (saved) setenv("DBUS_SYSTEM_BUS_ADDRESS", saved->c_str(), 1);
        else unsetenv("DBUS_SYSTEM_BUS_ADDRESS");
    }
};

// Arguments a verb's handler accepts, as many as its row asks for at least.
std::vector<std::string> valid_arguments(const Verb& verb) {
    if (verb.name == "assign") return {"node-b", "--start-rank", "0", "--count", "1"};
    if (verb.name == "keys") return {"show", "/nonexistent/dpctl-unit-test.key"};
    if (verb.usage.rfind("RANK", 0) == 0) return {"1"};
    return std::vector<std::string>(verb.min_args, "x");
}

// The table's commands as --help and the man page name them: "status", "keys generate".
std::set<std::string> table_commands() {
    std::set<std::string> out;
    for (const Verb& verb : verbs()) {
        if (verb.handler == keys_verb) {
            for (const Verb& sub : keys_verbs()) out.insert("keys " + std::string(sub.name));
        } else {
            out.insert(std::string(verb.name));
        }
    }
    return out;
}

// The commands of `dpctl --help` by section heading ("Status (everyone):" -> {"status", ...}),
// read as tests/integration/test_manpages.py reads them.
std::map<std::string, std::set<std::string>> help_commands() {
    std::map<std::string, std::set<std::string>> out;
    std::istringstream in(help());
    std::string line, heading;
    const std::regex heading_re(R"(^\S.*:$)"), command_re(R"(^  ([a-z][a-z-]*(?: [a-z][a-z-]*)*)(?=\s|$))");
    std::smatch m;
    while (std::getline(in, line)) {
        if (std::regex_match(line, heading_re)) {
            heading = line;
        } else if (heading.rfind("Options", 0) != 0 && heading.rfind("Exit status", 0) != 0 &&
                   std::regex_search(line, m, command_re)) {
            out[heading].insert(m[1]);
        }
    }
    return out;
}

// The commands of the COMMANDS section of man/dpctl.1.scd: its terms, "*keys generate* _PATH_".
std::set<std::string> man_commands() {
    std::ifstream in(std::string(DPENGINE_SOURCE_DIR) + "/man/dpctl.1.scd");
    REQUIRE(in);
    std::set<std::string> out;
    std::string line;
    bool commands = false;
    const std::regex term_re(R"(^\*([a-z][a-z-]*(?: [a-z][a-z-]*)*)\*)");
    std::smatch m;
    while (std::getline(in, line)) {
        if (line.rfind("# ", 0) == 0) commands = line == "# COMMANDS";
        else if (commands && std::regex_search(line, m, term_re)) out.insert(m[1]);
    }
    return out;
}

std::string recorded;
int record(Invocation& in) {
    recorded = std::string(in.verb.name) + " " + std::to_string(in.args.size());
    return 42;
}

}  // namespace

TEST_CASE("every verb of the table dispatches to its handler", "[dpctl]") {
    for (auto table : {verbs(), keys_verbs()}) {
        std::vector<Verb> recording(table.begin(), table.end());
        for (Verb& verb : recording) verb.handler = record;
        for (const Verb& verb : recording) {
            for (size_t n : {verb.min_args, verb.max_args == any_number ? verb.min_args + 3 : verb.max_args}) {
                recorded.clear();
                CHECK(dispatch_verb(recording, "", std::string(verb.name), Options{}, Args(n, "x")) == 42);
                CHECK(recorded == std::string(verb.name) + " " + std::to_string(n));
            }
        }
    }
}

TEST_CASE("every verb's own handler runs: bus verbs reach the bus, others their work", "[dpctl]") {
    NoBus no_bus;
    for (const Verb& verb : verbs()) {
        if (verb.name == "logs") continue;  // runs journalctl; its handler is reached below
        std::vector<std::string> args = {std::string(verb.name)};
        for (auto& a : valid_arguments(verb)) args.push_back(a);
        INFO("dpctl " << verb.name);
        if (verb.access == Verb::Access::local) {
            // version prints it; keys show of a missing file fails (1), having tried to read it.
            CHECK(run_dpctl(args) == (verb.name == "keys" ? exit_status::failure : exit_status::ok));
        } else {
            CHECK(run_dpctl(args) == exit_status::not_running);
        }
    }
    // The handlers check their arguments before the bus: a malformed RANK is exit status 2.
    for (const char* verb : {"start", "stop", "restart", "drain", "undrain", "logs"}) {
        INFO("dpctl " << verb << " abc");
        CHECK(run_dpctl({verb, "abc"}) == exit_status::invalid_arguments);
    }
}

TEST_CASE("argument counts outside a verb's bounds are refused with exit status 2, naming the usage", "[dpctl]") {
    NoBus no_bus;  // a bus call would exit 3
    for (auto [table, prefix] : {std::pair{verbs(), std::string()}, std::pair{keys_verbs(), std::string("keys ")}}) {
        for (const Verb& verb : table) {
            const std::string name = prefix + std::string(verb.name);
            std::vector<size_t> wrong;
            if (verb.min_args > 0) wrong.push_back(verb.min_args - 1);
            if (verb.max_args != any_number) wrong.push_back(verb.max_args + 1);
            for (size_t n : wrong) {
                INFO(name << " with " << n << " argument(s)");
                try {
                    dispatch_verb(table, prefix, std::string(verb.name), Options{}, Args(n, "1"));
                    FAIL("not refused");
                } catch (const UsageError& e) {
                    CHECK_THAT(e.message, Catch::Contains("usage: dpctl " + name));
                }
                std::vector<std::string> args;
                if (!prefix.empty()) args.push_back("keys");
                args.push_back(std::string(verb.name));
                args.insert(args.end(), n, "1");
                CHECK(run_dpctl(args) == exit_status::invalid_arguments);
            }
        }
    }
    CHECK(run_dpctl({"stop"}) == exit_status::invalid_arguments);
    try {
        dispatch_verb(verbs(), "", "stop", Options{}, Args{"1", "2"});
        FAIL("not refused");
    } catch (const UsageError& e) {
        CHECK(e.message == "stop takes exactly one RANK (got 2); usage: dpctl stop RANK");
    }
    try {
        dispatch_verb(verbs(), "", "ranks", Options{}, Args{"extra"});
        FAIL("not refused");
    } catch (const UsageError& e) {
        CHECK(e.message == "ranks takes no arguments (got 'extra'); usage: dpctl ranks");
    }
}

TEST_CASE("unknown verbs are refused with exit status 2", "[dpctl]") {
    NoBus no_bus;
    for (std::vector<std::string> args :
         {std::vector<std::string>{"frobnicate"}, {"Status"}, {"keys", "frobnicate"}, {"stop-nodes"}}) {
        INFO("dpctl " << args[0]);
        CHECK(run_dpctl(args) == exit_status::invalid_arguments);
    }
    CHECK(find_verb(verbs(), "frobnicate") == nullptr);
    try {
        dispatch_verb(keys_verbs(), "keys ", "frobnicate", Options{}, Args{});
        FAIL("not refused");
    } catch (const UsageError& e) {
        CHECK(e.message == "unknown command 'keys frobnicate'");
    }
}

TEST_CASE("a local verb gets no bus", "[dpctl]") {
    const Verb* version = find_verb(verbs(), "version");
    REQUIRE(version);
    const Options options;
    const Args args;
    Invocation in(*version, options, args);
    CHECK_THROWS_AS(in.bus(), std::logic_error);
}

TEST_CASE("dpctl --help and dpctl(1) name the table's commands, and its changing ones as such", "[dpctl]") {
    const auto by_heading = help_commands();
    std::set<std::string> in_help;
    for (const auto& [heading, commands] : by_heading) in_help.insert(commands.begin(), commands.end());
    CHECK(in_help == table_commands());
    CHECK(man_commands() == table_commands());

    // The section of root and group dpengine lists exactly the verbs that call a changing method.
    std::set<std::string> manage;
    for (const Verb& verb : verbs()) {
        if (verb.access == Verb::Access::manage) manage.insert(std::string(verb.name));
    }
    std::set<std::string> rank_control;
    for (const auto& [heading, commands] : by_heading) {
        if (heading.find("group 'dpengine'") != std::string::npos) {
            for (const auto& c : commands) rank_control.insert(c.substr(0, c.find(' ')));
        }
    }
    CHECK(rank_control == manage);
}
