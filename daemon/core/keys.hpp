// CurveZMQ keys, handled the way SSH handles its keys: a secret key file readable only by its
// owner, a public key file beside it (PATH.pub) whose one line can be appended to the head's
// authorized-keys file as it is, and an allow-list with one "KEY NODE [ranks=A-B]" per line.
#pragma once

#include "error.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace dpengine::keys {

inline constexpr size_t z85_key_length = 40;

struct KeyPair {
    std::string public_z85;
    std::string secret_z85;
};

Result<KeyPair> generate();

// Writes PATH (mode 0600, the secret key) and PATH.pub ("PUBLIC NODE"). Refuses to replace an
// existing file unless `overwrite`.
Status write_key_pair(const std::string& path, const KeyPair& pair, const std::string& node, bool overwrite);

// The group whose members may read a node's secret key (mode 0640): the daemon's own.
inline constexpr const char* service_group = "dpengine";
// The user the daemon runs as under systemd, who must be able to read the key.
inline constexpr const char* service_user = "dpengine";

// Reads a secret key file. Refuses a file that others can read, or that group can read unless
// it is mode 0640 with group `reader_group`; a malformed key; and the example keys published
// with libzmq (anyone can impersonate those).
Result<KeyPair> load_secret(const std::string& path, const std::string& reader_group = service_group);
// The content checks of load_secret on a file's text; `origin` names it in errors.
Result<KeyPair> parse_secret(const std::string& text, const std::string& origin);

// Reads the public key from a PATH.pub file or a "KEY NODE" line.
Result<std::string> load_public(const std::string& path);

bool is_z85_key(std::string_view text);

// A short stable name for logs: "SHA256:" + base64 of the first 12 bytes of the key's SHA-256.
std::string fingerprint(std::string_view public_z85);

struct AuthorizedKey {
    std::string public_z85;
    std::string node;
    // ranks=A-B: the ranks this key may claim; unset: whatever the node first registers.
    std::optional<std::pair<uint32_t, uint32_t>> ranks;
};

// Parses an authorized-keys file: blank lines and '#' comments are skipped; errors name the
// file and line. Refuses a file anyone may write, two lines for one node (whose ranks= would
// apply?), and a line for `head_node`, the head's own name (its ranks are the head's).
Result<std::vector<AuthorizedKey>> load_authorized_keys(const std::string& path, const std::string& head_node = {});
// The same on a file's text; `origin` names it in errors.
Result<std::vector<AuthorizedKey>> parse_authorized_keys(const std::string& text, const std::string& origin,
                                                         const std::string& head_node = {});

}  // namespace dpengine::keys
