#include "utf8.hpp"

namespace dpengine::utf8 {

size_t sequence_length(std::string_view s, size_t i) {
    auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
    unsigned char lead = byte(i);
    if (lead < 0x80) return 1;
    size_t length;
    unsigned char second_lo = 0x80, second_hi = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
        length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3;
        if (lead == 0xE0) second_lo = 0xA0;  // overlong
        if (lead == 0xED) second_hi = 0x9F;  // UTF-16 surrogates
    } else if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4;
        if (lead == 0xF0) second_lo = 0x90;  // overlong
        if (lead == 0xF4) second_hi = 0x8F;  // above U+10FFFF
    } else {
        return 0;
    }
    if (s.size() - i < length || byte(i + 1) < second_lo || byte(i + 1) > second_hi) return 0;
    for (size_t k = 2; k < length; ++k)
        if ((byte(i + k) & 0xC0) != 0x80) return 0;
    return length;
}

bool is_valid(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        size_t length = sequence_length(s, i);
        if (length == 0) return false;
        i += length;
    }
    return true;
}

std::string_view repaired(std::string_view s, std::string& storage) {
    if (is_valid(s)) return s;
    constexpr std::string_view replacement = "\xEF\xBF\xBD";
    storage.clear();
    storage.reserve(s.size() + 2 * replacement.size());
    for (size_t i = 0; i < s.size();) {
        if (size_t length = sequence_length(s, i)) {
            storage.append(s.data() + i, length);
            i += length;
        } else {
            storage += replacement;
            ++i;
        }
    }
    return storage;
}

}  // namespace dpengine::utf8
