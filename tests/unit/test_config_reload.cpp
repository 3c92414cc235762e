#include "core/config.hpp"

#include <catch2/catch.hpp>

#include <fstream>
#include <regex>
#include <set>
#include <sstream>

using namespace dpengine;

namespace {

// Sorted and joined, so that a failed comparison prints both sides.
std::string joined(const std::set<std::string>& names) {
    std::string out;
    for (const auto& name : names) out += (out.empty() ? "" : " ") + name;
    return out;
}

std::set<std::string> keys_that(OnReload kind) {
    std::set<std::string> out;
    for (const auto& key : config_keys()) {
        if (key.on_reload == kind) out.insert(key.name);
    }
    return out;
}

std::string names(const std::vector<ConfigKey>& keys) {
    std::string out;
    for (const auto& key : keys) out += (out.empty() ? "" : " ") + key.name;
    return out;
}

}  // namespace

TEST_CASE("a reload takes the keys that may change and names every key that changed", "[config_reload]") {
    Config running;
    Config next = running;
    REQUIRE(apply_reload(running, next).empty());

    next.frontend.max_body_bytes = 4096;   // live
    next.engine.default_max_tokens = 99;   // reaches ranks as they start
    next.engine.max_batch = 7;             // restart only
    next.frontend.api_keys = "/etc/keys";  // live, a string
    next.engine.env = {{"A", "1"}};        // restart only, a table
    auto changed = apply_reload(running, next);
    REQUIRE(names(changed) ==
            "frontend.max_body_bytes frontend.api_keys engine.max_batch engine.default_max_tokens engine.env");
    CHECK(changed[0].on_reload == OnReload::live);
    CHECK(changed[2].on_reload == OnReload::restart);
    CHECK(changed[3].on_reload == OnReload::rank_start);
    CHECK(running.frontend.max_body_bytes == 4096);
    CHECK(running.frontend.api_keys == "/etc/keys");
    CHECK(running.engine.default_max_tokens == 99);
    CHECK(running.engine.max_batch == Config{}.engine.max_batch);
    CHECK(running.engine.env.empty());
    // Once applied, the same file again changes nothing but still names what waits for a restart.
    CHECK(names(apply_reload(running, next)) == "engine.max_batch engine.env");
}

TEST_CASE("the table's reload column has every kind, and the ports wait for a restart", "[config_reload]") {
    CHECK(keys_that(OnReload::live).count("supervision.restart_budget"));
    CHECK(keys_that(OnReload::rank_start).count("engine.default_max_tokens"));
    CHECK(keys_that(OnReload::restart).count("frontend.port"));
    CHECK(keys_that(OnReload::restart).count("data_parallel.rpc_port"));
}

// dpengined.toml(5) lists under RELOADING the keys that apply at once and those that reach
// ranks as they start; the lists are the table's column.
TEST_CASE("dpengined.toml(5)'s RELOADING lists match the table", "[config_reload]") {
    std::ifstream file(DPENGINE_SOURCE_DIR "/man/dpengined.toml.5.scd");
    REQUIRE(file);
    std::stringstream text;
    text << file.rdbuf();
    const std::string page = text.str();
    auto start = page.find("\n# RELOADING\n");
    REQUIRE(start != std::string::npos);
    const std::string section = page.substr(start, page.find("\n# ", start + 1) - start);
    // The section's list items, each a paragraph starting with "- ".
    std::vector<std::string> items;
    std::istringstream lines(section);
    for (std::string line; std::getline(lines, line);) {
        if (line.rfind("- ", 0) == 0) items.push_back(line);
        else if (line.rfind("  ", 0) == 0 && !items.empty()) items.back() += line;
    }
    auto listed = [&](const std::string& opening) {
        std::set<std::string> out;
        for (const auto& item : items) {
            if (item.rfind(opening, 0) != 0) continue;
            std::regex dotted(R"(\*([a-z_]+\.[a-z_]+)\*)");
            for (std::sregex_iterator it(item.begin(), item.end(), dotted), end; it != end; ++it) out.insert((*it)[1]);
        }
        return out;
    };
    CHECK(joined(listed("- these apply at once")) == joined(keys_that(OnReload::live)));
    CHECK(joined(listed("- these reach each rank when it next starts")) == joined(keys_that(OnReload::rank_start)));
}
