// The TOML configuration file (and drop-ins), as the daemon reads it at start and on reload.
// The first byte picks strict mode; the rest is the file.
#include "core/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    bool strict = data[0] & 1;
    std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
    dpengine::Config config;
    std::vector<std::string> warnings;
    auto loaded = dpengine::load_config_text(config, "fuzz.toml", text, strict, warnings);
    // What was accepted must print back as TOML that loads again (what --check-config shows).
    if (loaded) {
        std::string printed = dpengine::to_toml(config);
        dpengine::Config reread;
        std::vector<std::string> ignored;
        if (!dpengine::load_config_text(reread, "printed.toml", printed, false, ignored)) __builtin_trap();
    }
    return 0;
}
