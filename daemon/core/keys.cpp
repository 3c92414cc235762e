#include "keys.hpp"

#include "private_file.hpp"

#include <fcntl.h>
#include <grp.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

namespace dpengine::keys {
namespace {

// The example key pairs printed in libzmq's documentation and tests. A deployment that uses
// one of them has no secret at all.
constexpr std::array<std::string_view, 2> published_secret_keys = {
    "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs",
    "JTKVSB%%)wK0E.X)V>+}o?pNmC{O&4W4b!Ni{Lh6",
};

std::string errno_text() { return std::strerror(errno); }

// Mode 0640 with the service's group: how packaging lets the daemon read a key root owns.
bool readable_by_group_only(const struct stat& st, const std::string& group) {
    if ((st.st_mode & 077) != 040) return false;
    const struct group* g = ::getgrnam(group.c_str());
    return g && g->gr_gid == st.st_gid;
}

std::string trim(std::string_view s) {
    size_t b = s.find_first_not_of(" \t\r");
    if (b == std::string_view::npos) return {};
    size_t e = s.find_last_not_of(" \t\r");
    return std::string(s.substr(b, e - b + 1));
}

// Splits a line into whitespace-separated words.
std::vector<std::string> words(std::string_view line) {
    std::vector<std::string> out;
    std::istringstream in{std::string(line)};
    for (std::string w; in >> w;) out.push_back(w);
    return out;
}

Result<std::string> read_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) return Error{"cannot read " + path + ": " + errno_text()};
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// The first line that is neither blank nor a comment.
std::string first_content_line(const std::string& text) {
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
        std::string t = trim(line);
        if (!t.empty() && t[0] != '#') return t;
    }
    return {};
}

Status write_file(const std::string& path, const std::string& content, mode_t mode, bool overwrite) {
    int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL);
    int fd = ::open(path.c_str(), flags, mode);
    if (fd < 0) {
        if (errno == EEXIST) return Error{path + " already exists; remove it first or pass --force"};
        return Error{"cannot write " + path + ": " + errno_text()};
    }
    bool ok =
        ::fchmod(fd, mode) == 0 && ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
    int err = errno;
    ok = (::close(fd) == 0) && ok;
    if (!ok) return Error{"cannot write " + path + ": " + std::strerror(err)};
    return Ok{};
}

}  // namespace

bool is_z85_key(std::string_view text) {
    if (text.size() != z85_key_length) return false;
    uint8_t raw[32];
    std::string copy(text);
    return zmq_z85_decode(raw, copy.c_str()) != nullptr;
}

Result<KeyPair> generate() {
    char pub[41], sec[41];
    if (zmq_curve_keypair(pub, sec) != 0) {
        return Error{"cannot generate a CURVE key pair: " + std::string(zmq_strerror(zmq_errno())) +
                     " (libzmq built without CURVE support?)"};
    }
    return KeyPair{pub, sec};
}

Status write_key_pair(const std::string& path, const KeyPair& pair, const std::string& node, bool overwrite) {
    std::string secret =
        "# dpengine CurveZMQ secret key of node " + node + ". Keep it private (mode 0600).\n" + pair.secret_z85 + "\n";
    // Check both names first: a new secret beside a stale .pub of another key would be worse
    // than no key at all.
    if (!overwrite) {
        for (const auto& p : {path, path + ".pub"}) {
            if (::access(p.c_str(), F_OK) == 0) return Error{p + " already exists; remove it first or pass --force"};
        }
    }
    if (auto s = write_file(path, secret, 0600, overwrite); !s) return s;
    return write_file(path + ".pub", pair.public_z85 + " " + node + "\n", 0644, overwrite);
}

Result<KeyPair> load_secret(const std::string& path, const std::string& reader_group) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        return Error{"cannot read the secret key " + path + ": " + errno_text() +
                     "; create one with 'dpctl keys generate " + path + "'"};
    }
    if ((st.st_mode & 077) && !readable_by_group_only(st, reader_group)) {
        return Error{"the secret key " + path + " is readable by group or others (mode " + mode_text(st.st_mode) +
                     "); run 'chmod 600 " + path + "' (or 'chgrp " + reader_group + " " + path + " && chmod 640 " +
                     path + "' to let that group read it)"};
    }
    if (::faccessat(AT_FDCWD, path.c_str(), R_OK, AT_EACCESS) != 0 && errno == EACCES) {
        return Error{"cannot read the secret key " + path + ": " + errno_text() + " (it belongs to uid " +
                     std::to_string(st.st_uid) + ", mode " + mode_text(st.st_mode) + "; this process runs as uid " +
                     std::to_string(::geteuid()) + "); run 'chown " + service_user + " " + path +
                     "' for the user dpengined runs as"};
    }
    auto text = read_file(path);
    if (!text) return text.error();
    return parse_secret(*text, path);
}

Result<KeyPair> parse_secret(const std::string& text, const std::string& origin) {
    const std::string& path = origin;
    std::string secret = first_content_line(text);
    if (!is_z85_key(secret)) {
        return Error{path +
                     " does not hold a CURVE secret key (40 Z85 characters); create one with 'dpctl keys generate'"};
    }
    for (auto published : published_secret_keys) {
        if (secret == published) {
            return Error{path +
                         " holds a key published in libzmq's examples, which anyone can use; generate your own with "
                         "'dpctl keys generate'"};
        }
    }
    char pub[41];
    if (zmq_curve_public(pub, secret.c_str()) != 0) return Error{"cannot derive the public key of " + path};
    return KeyPair{pub, secret};
}

Result<std::string> load_public(const std::string& path) {
    auto text = read_file(path);
    if (!text) return text.error();
    // A public key line names its node ("KEY NODE"); a secret key file holds a bare key, so
    // this refuses to pass a secret off as a public key.
    auto w = words(first_content_line(*text));
    if (w.size() < 2 || !is_z85_key(w[0])) {
        return Error{path + " does not hold a public key line ('KEY NODE', as dpctl keys generate writes to PATH.pub)"};
    }
    return w[0];
}

std::string fingerprint(std::string_view public_z85) {
    if (sodium_init() < 0) return "SHA256:?";
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, reinterpret_cast<const unsigned char*>(public_z85.data()), public_z85.size());
    char b64[sodium_base64_ENCODED_LEN(12, sodium_base64_VARIANT_ORIGINAL_NO_PADDING)];
    sodium_bin2base64(b64, sizeof b64, digest, 12, sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
    return std::string("SHA256:") + b64;
}

Result<std::vector<AuthorizedKey>> load_authorized_keys(const std::string& path, const std::string& head_node) {
    // Whoever can write the list can let any key in.
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && (st.st_mode & S_IWOTH)) {
        return Error{path + " is writable by anyone (mode " + mode_text(st.st_mode) +
                     "), so anyone could add a key; run "
                     "'chmod o-w " +
                     path + "'"};
    }
    auto text = read_file(path);
    if (!text) return Error{text.error().message + "; list each node's public key there (see dpctl keys generate)"};
    return parse_authorized_keys(*text, path, head_node);
}

Result<std::vector<AuthorizedKey>> parse_authorized_keys(const std::string& text, const std::string& path,
                                                         const std::string& head_node) {
    std::vector<AuthorizedKey> keys;
    std::vector<int> lines;  // the line of each entry of keys
    std::istringstream in(text);
    int line_no = 0;
    for (std::string line; std::getline(in, line);) {
        ++line_no;
        std::string t = trim(line);
        if (t.empty() || t[0] == '#') continue;
        auto where = path + ":" + std::to_string(line_no) + ": ";
        auto w = words(t);
        if (w.empty()) continue;  // only whitespace trim() leaves, such as \v or \f
        if (!is_z85_key(w[0])) return Error{where + "expected a 40-character Z85 public key, got '" + w[0] + "'"};
        if (w.size() < 2) return Error{where + "name the node after the key, as in 'KEY node-b'"};
        AuthorizedKey key{w[0], w[1], std::nullopt};
        for (size_t i = 2; i < w.size(); ++i) {
            std::string_view opt = w[i];
            uint32_t first = 0, last = 0;
            if (opt.rfind("ranks=", 0) == 0) {
                auto spec = opt.substr(6);
                auto dash = spec.find('-');
                auto a = spec.substr(0, dash), b = dash == std::string_view::npos ? a : spec.substr(dash + 1);
                auto r1 = std::from_chars(a.data(), a.data() + a.size(), first);
                auto r2 = std::from_chars(b.data(), b.data() + b.size(), last);
                if (r1.ec == std::errc() && r1.ptr == a.data() + a.size() && r2.ec == std::errc() &&
                    r2.ptr == b.data() + b.size() && first <= last) {
                    key.ranks = {first, last};
                    continue;
                }
            }
            return Error{where + "unknown option '" + std::string(opt) + "'; the only option is ranks=FIRST-LAST"};
        }
        if (!head_node.empty() && key.node == head_node) {
            return Error{where + "'" + key.node +
                         "' is the head's own node name (node.name); its ranks are the head's, "
                         "so no key may join under it: give the node another node.name"};
        }
        for (size_t i = 0; i < keys.size(); ++i) {
            if (keys[i].public_z85 == key.public_z85) {
                return Error{where + "this key is already listed for node '" + keys[i].node + "'"};
            }
            if (keys[i].node == key.node) {
                return Error{where + "node '" + key.node + "' is already listed on line " + std::to_string(lines[i]) +
                             "; one key per node (remove one of the two lines)"};
            }
        }
        keys.push_back(std::move(key));
        lines.push_back(line_no);
    }
    return keys;
}

}  // namespace dpengine::keys
