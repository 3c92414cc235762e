// Hex text for binary rendezvous values (gloo addresses, the NCCL unique id): the head's
// rendezvous store carries text.
#pragma once

#include "core/error.hpp"

#include <string>
#include <vector>

namespace dpengine::engine {

inline std::string to_hex(const void* data, size_t size) {
    static constexpr char digits[] = "0123456789abcdef";
    const auto* bytes = static_cast<const unsigned char*>(data);
    std::string out;
    out.reserve(size * 2);
    for (size_t i = 0; i < size; ++i) {
        out += digits[bytes[i] >> 4];
        out += digits[bytes[i] & 15];
    }
    return out;
}

inline Result<std::vector<char>> from_hex(const std::string& text) {
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    Error malformed{"the group's rendezvous value is not hex", "malformed"};
    if (text.size() % 2) return malformed;
    std::vector<char> out(text.size() / 2);
    for (size_t i = 0; i < out.size(); ++i) {
        int hi = nibble(text[2 * i]), lo = nibble(text[2 * i + 1]);
        if (hi < 0 || lo < 0) return malformed;
        out[i] = static_cast<char>(hi << 4 | lo);
    }
    return out;
}

}  // namespace dpengine::engine
