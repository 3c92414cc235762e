// Unit tests for the front-end's API key file (daemon/core/api_keys.hpp) and the private-file
// check it shares with the TLS key (daemon/core/private_file.hpp).
#include "core/api_keys.hpp"
#include "core/private_file.hpp"

#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

using namespace dpengine;

namespace {

// SHA-256("abc"), FIPS 180-2's example.
constexpr const char* abc_line = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

std::string error_of(std::string_view text) {
    auto parsed = api_keys::parse(text, "keys");
    REQUIRE_FALSE(parsed);
    return parsed.error().message;
}

}  // namespace

TEST_CASE("an API key's line is sha256: and its hex SHA-256", "[api_keys]") {
    CHECK(api_keys::hash_line("abc") == abc_line);
}

TEST_CASE("new API keys are distinct and their lines parse", "[api_keys]") {
    auto a = api_keys::generate(), b = api_keys::generate();
    REQUIRE(a);
    REQUIRE(b);
    CHECK(*a != *b);
    CHECK(a->rfind("dpe-", 0) == 0);
    CHECK(a->size() == 47);
    auto keys = api_keys::parse(api_keys::hash_line(*a) + " alice\n", "keys");
    REQUIRE(keys);
    CHECK(keys->accepts(*a));
    CHECK_FALSE(keys->accepts(*b));
}

TEST_CASE("a key file accepts exactly its keys", "[api_keys]") {
    auto keys = api_keys::parse(
        "# keys\n\n" + std::string(abc_line) + "  alice's laptop\n" + api_keys::hash_line("second") + "\r\n", "keys");
    REQUIRE(keys);
    CHECK(keys->size() == 2);
    CHECK(keys->accepts("abc"));
    CHECK(keys->accepts("second"));
    CHECK_FALSE(keys->accepts(""));
    CHECK_FALSE(keys->accepts("abd"));
    CHECK_FALSE(keys->accepts(abc_line));  // the hash is not the key
}

TEST_CASE("a key file with a line of another form is refused, naming the line", "[api_keys]") {
    std::string good = std::string(abc_line) + "\n";
    CHECK_THAT(error_of(good + "dpe-plainkey\n"), Catch::Contains("keys:2:") && Catch::Contains("hash-api-key"));
    CHECK_THAT(error_of(good + "SHA256:" + std::string(64, 'a') + "\n"), Catch::Contains("keys:2:"));
    CHECK_THAT(error_of("sha256:" + std::string(64, 'A') + "\n"), Catch::Contains("keys:1:"));
    CHECK_THAT(error_of("sha256:" + std::string(63, 'a') + "\n"), Catch::Contains("keys:1:"));
    CHECK_THAT(error_of("sha256:" + std::string(65, 'a') + "\n"), Catch::Contains("keys:1:"));
    CHECK_THAT(error_of(good + good), Catch::Contains("keys:2:") && Catch::Contains("twice"));
    CHECK_THAT(error_of("# nothing\n\n"), Catch::Contains("lists no key"));
}

TEST_CASE("private files: others may not read them, group and others may not write them", "[api_keys]") {
    std::string dir = (std::filesystem::temp_directory_path() / "dpengine-private-XXXXXX").string();
    REQUIRE(mkdtemp(dir.data()) != nullptr);
    std::string path = dir + "/keys";
    std::ofstream(path) << abc_line << "\n";
    for (mode_t mode : {0600, 0640, 0400}) {
        REQUIRE(::chmod(path.c_str(), mode) == 0);
        CHECK(read_private_file(path, "frontend.api_keys"));
        CHECK(api_keys::load(path));
    }
    for (mode_t mode : {0644, 0660, 0602, 0604}) {
        REQUIRE(::chmod(path.c_str(), mode) == 0);
        auto read = read_private_file(path, "frontend.api_keys");
        REQUIRE_FALSE(read);
        CHECK_THAT(read.error().message, Catch::Contains(path) && Catch::Contains("chmod 600 " + path));
    }
    auto missing = read_private_file(dir + "/none", "frontend.api_keys");
    REQUIRE_FALSE(missing);
    CHECK_THAT(missing.error().message, Catch::Contains(dir + "/none"));
    std::filesystem::remove_all(dir);
}
