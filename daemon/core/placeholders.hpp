// Placeholders in the http backend's command line and environment (engine.command,
// engine.env): "{port}", "{gpu}", "{rank}", "{local_rank}" and "{model}" are replaced by the
// rank's values; "{{" and "}}" stand for literal braces. The config validation checks the
// names with the same code the rank expands them with, so a typo fails at start-up.
#pragma once

#include "error.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace dpengine {

struct PlaceholderValues {
    uint16_t port = 0;        // the free loopback port the backend server must listen on
    std::string gpu;          // the GPU the rank uses (its local rank unless configured)
    uint32_t rank = 0;        // the global DP rank
    uint32_t local_rank = 0;  // the rank's index on its node
    std::string model;        // engine.model
};

// The names accepted between braces, for messages: "{port}, {gpu}, ...".
std::string known_placeholders();

// TEXT with every placeholder replaced. Errors (code "config") name the unknown placeholder
// or the unbalanced brace and say how to write a literal one.
Result<std::string> expand_placeholders(std::string_view text, const PlaceholderValues& values);

// Whether TEXT would expand (only known names, balanced braces), without values.
Status check_placeholders(std::string_view text);

}  // namespace dpengine
