#include "api_keys.hpp"

#include "private_file.hpp"

#include <sodium.h>

#include <algorithm>

namespace dpengine::api_keys {
namespace {

constexpr std::string_view prefix = "sha256:";

Digest digest_of(std::string_view key) {
    Digest d{};
    crypto_hash_sha256(d.data(), reinterpret_cast<const unsigned char*>(key.data()), key.size());
    return d;
}

std::string_view trim(std::string_view s) {
    size_t b = s.find_first_not_of(" \t\r");
    if (b == std::string_view::npos) return {};
    return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

bool is_lower_hex(std::string_view s) { return s.find_first_not_of("0123456789abcdef") == std::string_view::npos; }

}  // namespace

std::string hash_line(std::string_view key) {
    Digest d = digest_of(key);
    char hex[2 * sizeof(Digest) + 1];
    sodium_bin2hex(hex, sizeof hex, d.data(), d.size());
    return std::string(prefix) + hex;
}

Result<std::string> generate() {
    if (sodium_init() < 0) return Error{"libsodium cannot start, so no random key can be made"};
    unsigned char raw[32];
    randombytes_buf(raw, sizeof raw);
    char b64[sodium_base64_ENCODED_LEN(sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING)];
    sodium_bin2base64(b64, sizeof b64, raw, sizeof raw, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof raw);
    return std::string("dpe-") + b64;
}

bool KeySet::accepts(std::string_view presented) const {
    const Digest d = digest_of(presented);
    // No early exit: every listed hash is compared, each in constant time.
    int matched = 0;
    for (const Digest& listed : digests_) matched |= sodium_memcmp(listed.data(), d.data(), d.size()) == 0;
    return matched != 0;
}

Result<KeySet> parse(std::string_view text, const std::string& origin) {
    std::vector<Digest> digests;
    size_t line_no = 0;
    while (!text.empty()) {
        size_t end = text.find('\n');
        std::string_view line = trim(text.substr(0, end));
        text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
        ++line_no;
        if (line.empty() || line.front() == '#') continue;
        const std::string where = origin + ":" + std::to_string(line_no) + ": ";
        std::string_view word = line.substr(0, line.find_first_of(" \t"));
        std::string_view hex = word.substr(std::min(prefix.size(), word.size()));
        if (!word.starts_with(prefix) || hex.size() != 2 * sizeof(Digest) || !is_lower_hex(hex)) {
            return Error{where +
                         "expected 'sha256:' and 64 lowercase hex digits (a key's hash, as 'dpctl keys "
                         "hash-api-key' prints it), then an optional label; the file holds hashes, never "
                         "the keys themselves"};
        }
        Digest d{};
        sodium_hex2bin(d.data(), d.size(), hex.data(), hex.size(), nullptr, nullptr, nullptr);
        for (const Digest& seen : digests) {
            if (seen == d) return Error{where + "this key's hash is listed twice; remove one of the lines"};
        }
        digests.push_back(d);
    }
    if (digests.empty()) {
        return Error{origin +
                     " lists no key, so no client could use the API; add a key's line (dpctl keys api-key "
                     "makes one) or unset frontend.api_keys"};
    }
    return KeySet(std::move(digests));
}

Result<KeySet> load(const std::string& path) {
    auto text = read_private_file(path, "frontend.api_keys");
    if (!text) return text.error();
    return parse(*text, path);
}

}  // namespace dpengine::api_keys
