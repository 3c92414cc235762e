// Unit tests for CurveZMQ key handling (daemon/core/keys.hpp).
#include "core/keys.hpp"

#include <catch2/catch.hpp>

#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

using namespace dpengine;
namespace fs = std::filesystem;

namespace {

// A private directory for key files, removed with everything in it.
struct KeysTempDir {
    fs::path path;

    KeysTempDir() {
        std::string pattern = (fs::temp_directory_path() / "dpengine-keys-XXXXXX").string();
        REQUIRE(mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    ~KeysTempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    KeysTempDir(const KeysTempDir&) = delete;
    KeysTempDir& operator=(const KeysTempDir&) = delete;

    std::string file(const std::string& name) const { return (path / name).string(); }

    // Writes NAME with the given permission bits and returns its full path.
    std::string write(const std::string& name, const std::string& text, mode_t mode = 0600) const {
        std::string p = file(name);
        {
            std::ofstream out(p, std::ios::binary | std::ios::trunc);
            out << text;
            REQUIRE(out.good());
        }
        REQUIRE(::chmod(p.c_str(), mode) == 0);
        return p;
    }
};

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

mode_t mode_of(const std::string& path) {
    struct stat st {};
    REQUIRE(::stat(path.c_str(), &st) == 0);
    return st.st_mode & 07777;
}

keys::KeyPair new_pair() {
    auto pair = keys::generate();
    if (!pair) FAIL("generate failed: " << pair.error().message);
    return *pair;
}

// The public key libzmq derives from a secret key, as an independent check.
std::string derive_public(const std::string& secret) {
    char pub[41];
    REQUIRE(zmq_curve_public(pub, secret.c_str()) == 0);
    return pub;
}

// libzmq's published example key pairs (the "client" and "server" of its curve tests).
constexpr const char* example_client_public = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID";
constexpr const char* example_client_secret = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs";
constexpr const char* example_server_public = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";
constexpr const char* example_server_secret = "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6";

}  // namespace

// ---------------------------------------------------------------------------------------------
// generate, is_z85_key
// ---------------------------------------------------------------------------------------------

TEST_CASE("keys: generate makes a valid, fresh key pair", "[keys]") {
    auto a = new_pair();
    auto b = new_pair();
    CHECK(a.public_z85.size() == keys::z85_key_length);
    CHECK(a.secret_z85.size() == keys::z85_key_length);
    CHECK(keys::is_z85_key(a.public_z85));
    CHECK(keys::is_z85_key(a.secret_z85));
    CHECK(a.public_z85 != a.secret_z85);
    CHECK(a.public_z85 != b.public_z85);
    CHECK(a.secret_z85 != b.secret_z85);
    CHECK(derive_public(a.secret_z85) == a.public_z85);
    CHECK(derive_public(b.secret_z85) == b.public_z85);
}

TEST_CASE("keys: is_z85_key accepts exactly 40 Z85 characters", "[keys]") {
    CHECK(keys::is_z85_key(example_client_public));
    CHECK(keys::is_z85_key(example_server_secret));
    CHECK_FALSE(keys::is_z85_key(""));
    CHECK_FALSE(keys::is_z85_key(std::string(example_client_public).substr(0, 39)));
    CHECK_FALSE(keys::is_z85_key(std::string(example_client_public) + "0"));
    CHECK_FALSE(keys::is_z85_key(std::string(example_client_public).substr(0, 35)));  // 35: a multiple of 5
    std::string bad = example_client_public;
    bad[10] = '~';  // not in the Z85 alphabet
    CHECK_FALSE(keys::is_z85_key(bad));
    bad[10] = ' ';
    CHECK_FALSE(keys::is_z85_key(bad));
}

// ---------------------------------------------------------------------------------------------
// write_key_pair
// ---------------------------------------------------------------------------------------------

TEST_CASE("keys: write_key_pair writes a 0600 secret and a 'KEY NODE' public file", "[keys]") {
    KeysTempDir dir;
    auto pair = new_pair();
    std::string path = dir.file("node.key");
    auto status = keys::write_key_pair(path, pair, "node-a", false);
    if (!status) FAIL(status.error().message);

    CHECK(mode_of(path) == 0600);
    CHECK(slurp(path + ".pub") == pair.public_z85 + " node-a\n");
    std::string secret_text = slurp(path);
    CHECK_THAT(secret_text, Catch::Contains(pair.secret_z85));
    CHECK_THAT(secret_text, !Catch::Contains(pair.public_z85));
    // The public file may be world-readable; it must not hold the secret.
    CHECK_THAT(slurp(path + ".pub"), !Catch::Contains(pair.secret_z85));
}

TEST_CASE("keys: the secret key is 0600 even under a permissive umask", "[keys]") {
    KeysTempDir dir;
    mode_t old = ::umask(0);
    auto status = keys::write_key_pair(dir.file("k"), new_pair(), "n", false);
    ::umask(old);
    REQUIRE(status.ok());
    CHECK(mode_of(dir.file("k")) == 0600);
}

TEST_CASE("keys: write_key_pair refuses to overwrite unless asked to", "[keys]") {
    KeysTempDir dir;
    std::string path = dir.file("node.key");
    auto first = new_pair();
    REQUIRE(keys::write_key_pair(path, first, "node-a", false).ok());
    std::string secret_before = slurp(path);
    std::string public_before = slurp(path + ".pub");

    auto second = new_pair();
    auto refused = keys::write_key_pair(path, second, "node-b", false);
    REQUIRE_FALSE(refused.ok());
    CHECK_THAT(refused.error().message, Catch::Contains(path));
    CHECK_THAT(refused.error().message, Catch::Contains("exists"));
    CHECK(slurp(path) == secret_before);
    CHECK(slurp(path + ".pub") == public_before);

    auto replaced = keys::write_key_pair(path, second, "node-b", true);
    if (!replaced) FAIL(replaced.error().message);
    CHECK(slurp(path + ".pub") == second.public_z85 + " node-b\n");
    auto loaded = keys::load_secret(path);
    REQUIRE(loaded.ok());
    CHECK(loaded->secret_z85 == second.secret_z85);
}

TEST_CASE("keys: overwriting a world-readable file leaves it 0600", "[keys]") {
    KeysTempDir dir;
    std::string path = dir.write("node.key",
                                 "old contents that are longer than a key, to check truncation "
                                 "......................................................\n",
                                 0644);
    auto pair = new_pair();
    REQUIRE(keys::write_key_pair(path, pair, "n", true).ok());
    CHECK(mode_of(path) == 0600);
    CHECK_THAT(slurp(path), !Catch::Contains("old contents"));
    auto loaded = keys::load_secret(path);
    if (!loaded) FAIL(loaded.error().message);
    CHECK(loaded->public_z85 == pair.public_z85);
}

TEST_CASE("keys: write_key_pair reports a directory that does not exist", "[keys]") {
    KeysTempDir dir;
    auto status = keys::write_key_pair(dir.file("missing/dir/key"), new_pair(), "n", false);
    REQUIRE_FALSE(status.ok());
    CHECK_THAT(status.error().message, Catch::Contains("missing/dir/key"));
}

// ---------------------------------------------------------------------------------------------
// load_secret
// ---------------------------------------------------------------------------------------------

TEST_CASE("keys: load_secret reads back the pair and derives the right public key", "[keys]") {
    KeysTempDir dir;
    auto pair = new_pair();
    std::string path = dir.file("node.key");
    REQUIRE(keys::write_key_pair(path, pair, "node-a", false).ok());
    auto loaded = keys::load_secret(path);
    if (!loaded) FAIL(loaded.error().message);
    CHECK(loaded->secret_z85 == pair.secret_z85);
    CHECK(loaded->public_z85 == pair.public_z85);

    SECTION("a bare key file with comments, blank lines and surrounding spaces") {
        std::string bare = dir.write("bare.key", "# a comment\n\n   \n  " + pair.secret_z85 + "  \r\n");
        auto b = keys::load_secret(bare);
        if (!b) FAIL(b.error().message);
        CHECK(b->secret_z85 == pair.secret_z85);
        CHECK(b->public_z85 == pair.public_z85);
    }
}

TEST_CASE("keys: load_secret refuses a key readable by group or others", "[keys]") {
    KeysTempDir dir;
    auto pair = new_pair();
    for (mode_t mode : {mode_t{0644}, mode_t{0640}, mode_t{0604}, mode_t{0660}}) {
        INFO("mode " << std::oct << mode);
        std::string path = dir.write("node.key", pair.secret_z85 + "\n", mode);
        auto r = keys::load_secret(path);
        REQUIRE_FALSE(r.ok());
        CHECK_THAT(r.error().message, Catch::Contains("chmod 600"));
        CHECK_THAT(r.error().message, Catch::Contains(path));
    }
    // The same file at 0400 is fine: only the owner can read it.
    std::string path = dir.write("node.key", pair.secret_z85 + "\n", 0400);
    CHECK(keys::load_secret(path).ok());
}

TEST_CASE("keys: load_secret refuses a malformed key", "[keys]") {
    KeysTempDir dir;
    auto pair = new_pair();
    std::string shortened = pair.secret_z85.substr(0, 39);
    std::string bad_char = pair.secret_z85;
    bad_char[0] = '~';
    for (const std::string& text :
         {std::string(""), std::string("# only a comment\n"), std::string("not a key\n"), shortened + "\n",
          pair.secret_z85 + "x\n", bad_char + "\n", pair.secret_z85 + " extra-word\n"}) {
        INFO("file: '" << text << "'");
        std::string path = dir.write("bad.key", text);
        auto r = keys::load_secret(path);
        REQUIRE_FALSE(r.ok());
        CHECK_THAT(r.error().message, Catch::Contains(path));
        CHECK_THAT(r.error().message, Catch::Contains("secret key"));
    }
}

TEST_CASE("keys: load_secret refuses the secret keys published with libzmq", "[keys]") {
    // Sanity: these really are the published pairs.
    CHECK(derive_public(example_client_secret) == example_client_public);
    CHECK(derive_public(example_server_secret) == example_server_public);

    KeysTempDir dir;
    for (const char* published : {example_client_secret, example_server_secret}) {
        INFO("key " << published);
        std::string path = dir.write("published.key", std::string("# copied from the docs\n") + published + "\n");
        auto r = keys::load_secret(path);
        REQUIRE_FALSE(r.ok());
        CHECK_THAT(r.error().message, Catch::Contains("published"));
        CHECK_THAT(r.error().message, Catch::Contains("dpctl keys generate"));
    }
}

TEST_CASE("keys: a missing secret key file suggests 'dpctl keys generate'", "[keys]") {
    KeysTempDir dir;
    std::string path = dir.file("nope.key");
    auto r = keys::load_secret(path);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains(path));
    CHECK_THAT(r.error().message, Catch::Contains("dpctl keys generate"));
}

// ---------------------------------------------------------------------------------------------
// load_public
// ---------------------------------------------------------------------------------------------

TEST_CASE("keys: load_public reads a .pub file or a 'KEY NODE' line", "[keys]") {
    KeysTempDir dir;
    auto pair = new_pair();
    std::string path = dir.file("node.key");
    REQUIRE(keys::write_key_pair(path, pair, "node-a", false).ok());

    auto from_pub = keys::load_public(path + ".pub");
    if (!from_pub) FAIL(from_pub.error().message);
    CHECK(*from_pub == pair.public_z85);

    std::string line =
        dir.write("line", "# the head's key\n\n" + std::string(example_server_public) + " head ranks=0-1\n", 0644);
    auto from_line = keys::load_public(line);
    if (!from_line) FAIL(from_line.error().message);
    CHECK(*from_line == example_server_public);

    // A bare key is what a secret key file holds: refused, so a secret is never passed off as
    // a public key.
    std::string bare = dir.write("bare", std::string("  ") + example_client_public + "\n", 0644);
    auto from_bare = keys::load_public(bare);
    REQUIRE_FALSE(from_bare.ok());
    CHECK_THAT(from_bare.error().message, Catch::Contains("KEY NODE"));
    auto from_secret = keys::load_public(path);
    CHECK_FALSE(from_secret.ok());
}

TEST_CASE("keys: write_key_pair writes nothing when either file exists", "[keys]") {
    KeysTempDir dir;
    std::string path = dir.file("node.key");
    dir.write("node.key.pub", "stale\n", 0644);
    auto written = keys::write_key_pair(path, new_pair(), "node-a", false);
    REQUIRE_FALSE(written.ok());
    CHECK_THAT(written.error().message, Catch::Contains("node.key.pub already exists"));
    CHECK_FALSE(std::filesystem::exists(path));
}

TEST_CASE("keys: load_public refuses a missing file and a malformed key", "[keys]") {
    KeysTempDir dir;
    auto missing = keys::load_public(dir.file("absent.pub"));
    REQUIRE_FALSE(missing.ok());
    CHECK_THAT(missing.error().message, Catch::Contains("absent.pub"));

    for (const std::string& text : {std::string(""), std::string("# nothing\n"), std::string("short node\n"),
                                    std::string(example_client_public).substr(1) + " node\n"}) {
        INFO("file: '" << text << "'");
        std::string path = dir.write("bad.pub", text, 0644);
        auto r = keys::load_public(path);
        REQUIRE_FALSE(r.ok());
        CHECK_THAT(r.error().message, Catch::Contains(path));
    }
}

// ---------------------------------------------------------------------------------------------
// fingerprint
// ---------------------------------------------------------------------------------------------

TEST_CASE("keys: fingerprint is stable, prefixed and distinguishes keys", "[keys]") {
    auto a = new_pair();
    auto b = new_pair();
    std::string fa = keys::fingerprint(a.public_z85);
    CHECK(fa == keys::fingerprint(a.public_z85));
    CHECK_THAT(fa, Catch::StartsWith("SHA256:"));
    CHECK(fa.size() == 7 + 16);  // base64 of 12 bytes, no padding
    CHECK(fa != keys::fingerprint(b.public_z85));
    CHECK_THAT(fa, !Catch::Contains(a.public_z85));

    std::set<std::string> seen;
    for (int i = 0; i < 50; ++i) seen.insert(keys::fingerprint(new_pair().public_z85));
    CHECK(seen.size() == 50);
}

TEST_CASE("keys: fingerprint is base64 of the first 12 bytes of the key's SHA-256", "[keys]") {
    // Computed independently: base64(sha256(key)[:12]).
    CHECK(keys::fingerprint(example_client_public) == "SHA256:nf2f4Tr50M5qC6v9");
    CHECK(keys::fingerprint(example_server_public) == "SHA256:hBEnhdEJKn7/wlkE");
}

// ---------------------------------------------------------------------------------------------
// load_authorized_keys
// ---------------------------------------------------------------------------------------------

TEST_CASE("keys: load_authorized_keys parses keys, nodes and rank ranges", "[keys]") {
    KeysTempDir dir;
    auto a = new_pair();
    auto b = new_pair();
    auto c = new_pair();
    std::string path =
        dir.write("authorized_keys",
                  "# nodes allowed to join\n"
                  "\n"
                  "   \n" +
                      a.public_z85 + " node-a\n" + "  # indented comment\n" + b.public_z85 +
                      "   node-b   ranks=2-3  \r\n" + "\t" + c.public_z85 + "\tnode-c ranks=7-7",  // no final newline
                  0644);
    auto r = keys::load_authorized_keys(path);
    if (!r) FAIL(r.error().message);
    const auto& list = *r;
    REQUIRE(list.size() == 3);
    CHECK(list[0].public_z85 == a.public_z85);
    CHECK(list[0].node == "node-a");
    CHECK_FALSE(list[0].ranks.has_value());
    CHECK(list[1].public_z85 == b.public_z85);
    CHECK(list[1].node == "node-b");
    REQUIRE(list[1].ranks.has_value());
    CHECK(list[1].ranks->first == 2);
    CHECK(list[1].ranks->second == 3);
    CHECK(list[2].node == "node-c");
    REQUIRE(list[2].ranks.has_value());
    CHECK(list[2].ranks->first == 7);
    CHECK(list[2].ranks->second == 7);
}

TEST_CASE("keys: a .pub file's line can be appended to authorized keys as it is", "[keys]") {
    KeysTempDir dir;
    auto pair = new_pair();
    std::string key = dir.file("node.key");
    REQUIRE(keys::write_key_pair(key, pair, "node-b", false).ok());
    std::string path = dir.write("authorized_keys", "# header\n" + slurp(key + ".pub"), 0644);
    auto r = keys::load_authorized_keys(path);
    if (!r) FAIL(r.error().message);
    REQUIRE(r->size() == 1);
    CHECK((*r)[0].public_z85 == pair.public_z85);
    CHECK((*r)[0].node == "node-b");
}

TEST_CASE("keys: an empty or comment-only authorized keys file lists nothing", "[keys]") {
    KeysTempDir dir;
    for (const std::string& text : {std::string(""), std::string("# nobody yet\n\n")}) {
        auto r = keys::load_authorized_keys(dir.write("authorized_keys", text, 0644));
        REQUIRE(r.ok());
        CHECK(r->empty());
    }
}

TEST_CASE("keys: authorized keys errors name the file and the line", "[keys]") {
    KeysTempDir dir;
    auto a = new_pair();
    auto b = new_pair();
    const std::string good = a.public_z85 + " node-a\n";
    const std::string preamble = "# comment\n" + good + "\n";  // the bad line is line 4

    struct Case {
        const char* what;
        std::string line;
        std::string expect;
    };
    const std::vector<Case> cases = {
        {"a bad key", "not-a-key node-b", "not-a-key"},
        {"a key one character short", b.public_z85.substr(1) + " node-b", "Z85"},
        {"no node name", b.public_z85, "node"},
        {"no node name, trailing spaces", b.public_z85 + "   ", "node"},
        {"an unknown option", b.public_z85 + " node-b colour=blue", "colour=blue"},
        {"a reversed range", b.public_z85 + " node-b ranks=3-2", "ranks=3-2"},
        {"a range that is not numbers", b.public_z85 + " node-b ranks=a-b", "ranks=a-b"},
        {"a negative range", b.public_z85 + " node-b ranks=-1-2", "ranks=-1-2"},
        {"a range with junk", b.public_z85 + " node-b ranks=1-2x", "ranks=1-2x"},
        {"an empty range", b.public_z85 + " node-b ranks=", "ranks="},
        {"a range beyond 32 bits", b.public_z85 + " node-b ranks=0-4294967296", "ranks=0-4294967296"},
        {"a duplicate key", a.public_z85 + " node-z", "node-a"},
    };
    for (const auto& c : cases) {
        INFO(c.what << ": '" << c.line << "'");
        std::string path = dir.write("authorized_keys", preamble + c.line + "\n" + b.public_z85 + " later\n", 0644);
        auto r = keys::load_authorized_keys(path);
        REQUIRE_FALSE(r.ok());
        INFO("error: " << r.error().message);
        CHECK_THAT(r.error().message, Catch::StartsWith(path + ":4:"));
        CHECK_THAT(r.error().message, Catch::Contains(c.expect));
    }
}

TEST_CASE("keys: a missing authorized keys file is an error naming it", "[keys]") {
    KeysTempDir dir;
    std::string path = dir.file("authorized_keys");
    auto r = keys::load_authorized_keys(path);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains(path));
}

TEST_CASE("authorized keys from text: a line of only vertical whitespace is blank", "[keys]") {
    // trim() leaves "\v", which splits into no words: reading the first word was out of bounds.
    auto keys = keys::parse_authorized_keys("\v\n\f\n# comment\n", "authorized_keys");
    REQUIRE(keys);
    REQUIRE(keys->empty());
    auto bad = keys::parse_authorized_keys("\v not-a-key node\n", "authorized_keys");
    REQUIRE_FALSE(bad);
    REQUIRE(bad.error().message.find("authorized_keys:1: expected a 40-character Z85 public key") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Who may read and write the key files
// ---------------------------------------------------------------------------------------------

TEST_CASE("keys: load_secret accepts mode 0640 only with the service's group", "[keys]") {
    KeysTempDir dir;
    auto pair = new_pair();
    // The process's own group stands in for dpengine: the file is created with it.
    const struct group* own = ::getgrgid(::getegid());
    REQUIRE(own != nullptr);
    const std::string group = own->gr_name;
    std::string path = dir.write("node.key", pair.secret_z85 + "\n", 0640);
    REQUIRE(::chown(path.c_str(), static_cast<uid_t>(-1), ::getegid()) == 0);
    auto readable = keys::load_secret(path, group);
    if (!readable) FAIL(readable.error().message);
    CHECK(readable->public_z85 == pair.public_z85);

    // Another group may not read it; nor may the group write it, nor others read it.
    auto other = keys::load_secret(path, "dpengine-no-such-group");
    REQUIRE_FALSE(other.ok());
    CHECK_THAT(other.error().message, Catch::Contains("mode 0640"));
    CHECK_THAT(other.error().message, Catch::Contains("chgrp dpengine-no-such-group " + path + " && chmod 640"));
    for (mode_t mode : {mode_t{0660}, mode_t{0644}, mode_t{0650}}) {
        INFO("mode " << std::oct << mode);
        REQUIRE(::chmod(path.c_str(), mode) == 0);
        CHECK_FALSE(keys::load_secret(path, group).ok());
    }
}

TEST_CASE("keys: an authorized keys file anyone may write is refused", "[keys]") {
    KeysTempDir dir;
    std::string text = new_pair().public_z85 + " node-b\n";
    for (mode_t mode : {mode_t{0666}, mode_t{0602}}) {
        INFO("mode " << std::oct << mode);
        std::string path = dir.write("authorized_keys", text, mode);
        auto r = keys::load_authorized_keys(path);
        REQUIRE_FALSE(r.ok());
        CHECK_THAT(r.error().message, Catch::StartsWith(path));
        CHECK_THAT(r.error().message, Catch::Contains("chmod o-w " + path));
    }
    // Writable by its group (an admins' group) is the owner's choice.
    CHECK(keys::load_authorized_keys(dir.write("authorized_keys", text, 0664)).ok());
}

TEST_CASE("keys: authorized keys refuse a node listed twice, naming both lines", "[keys]") {
    KeysTempDir dir;
    auto a = new_pair(), b = new_pair();
    std::string path = dir.write(
        "authorized_keys", "# nodes\n" + a.public_z85 + " node-b ranks=2-3\n\n" + b.public_z85 + " node-b\n", 0644);
    auto r = keys::load_authorized_keys(path);
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::StartsWith(path + ":4:"));
    CHECK_THAT(r.error().message, Catch::Contains("node 'node-b' is already listed on line 2"));
}

TEST_CASE("keys: authorized keys refuse a line with the head's own node name", "[keys]") {
    KeysTempDir dir;
    auto a = new_pair(), b = new_pair();
    std::string path =
        dir.write("authorized_keys", a.public_z85 + " node-b\n" + b.public_z85 + " head-a ranks=0-1\n", 0644);
    auto r = keys::load_authorized_keys(path, "head-a");
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::StartsWith(path + ":2:"));
    CHECK_THAT(r.error().message, Catch::Contains("'head-a' is the head's own node name"));
    // Another head may list it.
    CHECK(keys::load_authorized_keys(path, "head-z").ok());
}
