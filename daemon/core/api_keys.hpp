// The front-end's API keys (frontend.api_keys), kept as hashes: the file holds one
// "sha256:HEX [LABEL]" line per key (HEX: the SHA-256 of the key's bytes, 64 lowercase hex
// digits; LABEL: free text for the operator, such as who holds the key), blank lines and
// '#' comments. `dpctl keys api-key` makes a key and its line; `dpctl keys hash-api-key` the
// line of a key of your own. Keys are secrets of high entropy, so one unsalted hash keeps them
// safe at rest; a client's key is hashed the same way and compared in constant time.
#pragma once

#include "error.hpp"

#include <array>
#include <string>
#include <string_view>
#include <vector>

namespace dpengine::api_keys {

using Digest = std::array<unsigned char, 32>;

// "sha256:" + the hex SHA-256 of `key`: the line the key file holds for it.
std::string hash_line(std::string_view key);

// A new key: "dpe-" + 43 base64url characters (32 random bytes).
Result<std::string> generate();

class KeySet {
public:
    KeySet() = default;
    explicit KeySet(std::vector<Digest> digests) : digests_(std::move(digests)) {}

    // Whether `presented` is one of the keys. Its hash is compared with every listed hash,
    // in time that does not depend on where (or whether) it matches.
    bool accepts(std::string_view presented) const;
    size_t size() const { return digests_.size(); }

private:
    std::vector<Digest> digests_;
};

// Reads a key file (a private file: see core/private_file.hpp) and parses it. Errors name the
// file and line, and the fix.
Result<KeySet> load(const std::string& path);
// The same on a file's text; `origin` names it in errors.
Result<KeySet> parse(std::string_view text, const std::string& origin);

}  // namespace dpengine::api_keys
