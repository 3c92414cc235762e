// UTF-8 checks for text that becomes JSON strings: generated text can end inside a
// multi-byte character, and a client's bytes can be anything, but a JSON body must be UTF-8.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace dpengine::utf8 {

// Length of the well-formed UTF-8 sequence (RFC 3629: no overlongs, no surrogates, nothing
// above U+10FFFF) starting at s[i], or 0 when the bytes there are not one.
size_t sequence_length(std::string_view s, size_t i);

bool is_valid(std::string_view s);

// `s` itself when it is valid UTF-8, else a copy in `storage` with each bad byte replaced by
// U+FFFD.
std::string_view repaired(std::string_view s, std::string& storage);

}  // namespace dpengine::utf8
