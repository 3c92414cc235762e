// Key files: a node's secret key file, the head's authorized-keys list and the front-end's API
// key hashes, as read from disk.
#include "core/api_keys.hpp"
#include "core/keys.hpp"

#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(reinterpret_cast<const char*>(data), size);
    auto secret = dpengine::keys::parse_secret(text, "fuzz.key");
    if (secret && (!dpengine::keys::is_z85_key(secret->public_z85) || !dpengine::keys::is_z85_key(secret->secret_z85)))
        std::abort();
    auto authorized = dpengine::keys::parse_authorized_keys(text, "authorized_keys");
    if (authorized) {
        for (const auto& key : *authorized) {
            if (!dpengine::keys::is_z85_key(key.public_z85) || key.node.empty()) std::abort();
            if (key.ranks && key.ranks->first > key.ranks->second) std::abort();
            (void)dpengine::keys::fingerprint(key.public_z85);
        }
    }
    auto api_keys = dpengine::api_keys::parse(text, "api_keys");
    if (api_keys && (api_keys->size() == 0 || api_keys->accepts(text) != api_keys->accepts(text))) std::abort();
    return 0;
}
