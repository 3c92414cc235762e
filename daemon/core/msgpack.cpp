#include "msgpack.hpp"

#include <bit>
#include <cstring>

namespace dpengine::msgpack {

// ---- Writer ----

void Writer::big_endian(uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void Writer::header(uint8_t fix_base, uint8_t fix_limit, uint8_t code8, uint8_t code16, uint8_t code32, uint32_t n) {
    if (fix_limit && n < fix_limit) {
        out_.push_back(static_cast<char>(fix_base | n));
    } else if (code8 && n <= 0xff) {
        out_.push_back(static_cast<char>(code8));
        big_endian(n, 1);
    } else if (n <= 0xffff) {
        out_.push_back(static_cast<char>(code16));
        big_endian(n, 2);
    } else {
        out_.push_back(static_cast<char>(code32));
        big_endian(n, 4);
    }
}

void Writer::nil() { out_.push_back(static_cast<char>(0xc0)); }
void Writer::boolean(bool v) { out_.push_back(static_cast<char>(v ? 0xc3 : 0xc2)); }

void Writer::uint(uint64_t v) {
    if (v < 0x80) {
        out_.push_back(static_cast<char>(v));
    } else if (v <= 0xff) {
        out_.push_back(static_cast<char>(0xcc));
        big_endian(v, 1);
    } else if (v <= 0xffff) {
        out_.push_back(static_cast<char>(0xcd));
        big_endian(v, 2);
    } else if (v <= 0xffffffff) {
        out_.push_back(static_cast<char>(0xce));
        big_endian(v, 4);
    } else {
        out_.push_back(static_cast<char>(0xcf));
        big_endian(v, 8);
    }
}

void Writer::sint(int64_t v) {
    if (v >= 0) return uint(static_cast<uint64_t>(v));
    if (v >= -32) {
        out_.push_back(static_cast<char>(static_cast<uint8_t>(v)));
    } else {
        out_.push_back(static_cast<char>(0xd3));
        big_endian(static_cast<uint64_t>(v), 8);
    }
}

void Writer::float64(double v) {
    out_.push_back(static_cast<char>(0xcb));
    big_endian(std::bit_cast<uint64_t>(v), 8);
}

void Writer::str(std::string_view v) {
    if (v.size() > 0xffffffffu) throw std::length_error("msgpack string longer than 4 GiB");
    header(0xa0, 32, 0xd9, 0xda, 0xdb, static_cast<uint32_t>(v.size()));
    out_.append(v);
}

void Writer::bin(std::string_view v) {
    if (v.size() > 0xffffffffu) throw std::length_error("msgpack binary longer than 4 GiB");
    header(0, 0, 0xc4, 0xc5, 0xc6, static_cast<uint32_t>(v.size()));
    out_.append(v);
}

void Writer::array(uint32_t count) { header(0x90, 16, 0, 0xdc, 0xdd, count); }
void Writer::map(uint32_t count) { header(0x80, 16, 0, 0xde, 0xdf, count); }

// ---- Reader ----

namespace {
constexpr int max_depth = 16;

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::nil: return "nil";
        case Kind::boolean: return "boolean";
        case Kind::uint: return "unsigned integer";
        case Kind::sint: return "negative integer";
        case Kind::float64: return "float";
        case Kind::str: return "string";
        case Kind::bin: return "binary";
        case Kind::array: return "array";
        case Kind::map: return "map";
        case Kind::ext: return "extension";
    }
    return "value";
}
}  // namespace

uint8_t Reader::byte() {
    if (pos_ >= in_.size()) throw DecodeError("message truncated");
    return static_cast<uint8_t>(in_[pos_++]);
}

uint64_t Reader::big_endian(int bytes) {
    if (in_.size() - pos_ < static_cast<size_t>(bytes)) throw DecodeError("message truncated");
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(in_[pos_++]);
    return v;
}

std::string_view Reader::take(uint64_t n) {
    if (n > in_.size() - pos_) throw DecodeError("length exceeds message size");
    std::string_view v = in_.substr(pos_, n);
    pos_ += n;
    return v;
}

// Every element takes at least one byte, so a count larger than the bytes left is a lie.
uint32_t Reader::container_count(uint64_t n, uint64_t min_element_bytes) {
    if (n * min_element_bytes > in_.size() - pos_) throw DecodeError("element count exceeds message size");
    return static_cast<uint32_t>(n);
}

Kind Reader::peek() const {
    if (pos_ >= in_.size()) throw DecodeError("message truncated");
    uint8_t b = static_cast<uint8_t>(in_[pos_]);
    if (b <= 0x7f) return Kind::uint;
    if (b <= 0x8f) return Kind::map;
    if (b <= 0x9f) return Kind::array;
    if (b <= 0xbf) return Kind::str;
    if (b >= 0xe0) return Kind::sint;
    switch (b) {
        case 0xc0: return Kind::nil;
        case 0xc2:
        case 0xc3: return Kind::boolean;
        case 0xc4:
        case 0xc5:
        case 0xc6: return Kind::bin;
        case 0xca:
        case 0xcb: return Kind::float64;
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf: return Kind::uint;
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3: return Kind::sint;
        case 0xd9:
        case 0xda:
        case 0xdb: return Kind::str;
        case 0xdc:
        case 0xdd: return Kind::array;
        case 0xde:
        case 0xdf: return Kind::map;
        case 0xc7:
        case 0xc8:
        case 0xc9:
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8: return Kind::ext;
        default: throw DecodeError("invalid msgpack type byte");
    }
}

static DecodeError type_error(const char* want, Kind got) {
    return DecodeError(std::string("expected ") + want + ", got " + kind_name(got));
}

void Reader::nil() {
    Kind k = peek();
    if (k != Kind::nil) throw type_error("nil", k);
    ++pos_;
}

bool Reader::try_nil() {
    if (peek() != Kind::nil) return false;
    ++pos_;
    return true;
}

bool Reader::boolean() {
    Kind k = peek();
    if (k != Kind::boolean) throw type_error("boolean", k);
    return byte() == 0xc3;
}

uint64_t Reader::uint() {
    Kind k = peek();
    uint8_t b = byte();
    if (b <= 0x7f) return b;
    switch (b) {
        case 0xcc: return big_endian(1);
        case 0xcd: return big_endian(2);
        case 0xce: return big_endian(4);
        case 0xcf: return big_endian(8);
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3: {
            --pos_;
            int64_t v = sint();
            if (v < 0) throw DecodeError("expected unsigned integer, got negative integer");
            return static_cast<uint64_t>(v);
        }
        default: --pos_; throw type_error("unsigned integer", k);
    }
}

int64_t Reader::sint() {
    Kind k = peek();
    uint8_t b = byte();
    if (b <= 0x7f) return b;
    if (b >= 0xe0) return static_cast<int8_t>(b);
    switch (b) {
        case 0xd0: return static_cast<int8_t>(big_endian(1));
        case 0xd1: return static_cast<int16_t>(big_endian(2));
        case 0xd2: return static_cast<int32_t>(big_endian(4));
        case 0xd3: return static_cast<int64_t>(big_endian(8));
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf: {
            --pos_;
            uint64_t v = uint();
            if (v > static_cast<uint64_t>(INT64_MAX)) throw DecodeError("integer out of range");
            return static_cast<int64_t>(v);
        }
        default: --pos_; throw type_error("integer", k);
    }
}

double Reader::float64() {
    Kind k = peek();
    if (k == Kind::uint) return static_cast<double>(uint());
    if (k == Kind::sint) return static_cast<double>(sint());
    if (k != Kind::float64) throw type_error("float", k);
    uint8_t b = byte();
    if (b == 0xca) return std::bit_cast<float>(static_cast<uint32_t>(big_endian(4)));
    return std::bit_cast<double>(big_endian(8));
}

std::string_view Reader::str() {
    Kind k = peek();
    if (k != Kind::str) throw type_error("string", k);
    uint8_t b = byte();
    if (b >= 0xa0 && b <= 0xbf) return take(b & 0x1f);
    if (b == 0xd9) return take(big_endian(1));
    if (b == 0xda) return take(big_endian(2));
    return take(big_endian(4));
}

std::string_view Reader::bin() {
    Kind k = peek();
    if (k == Kind::str) return str();
    if (k != Kind::bin) throw type_error("binary", k);
    uint8_t b = byte();
    if (b == 0xc4) return take(big_endian(1));
    if (b == 0xc5) return take(big_endian(2));
    return take(big_endian(4));
}

uint32_t Reader::array() {
    Kind k = peek();
    if (k != Kind::array) throw type_error("array", k);
    uint8_t b = byte();
    if (b >= 0x90 && b <= 0x9f) return container_count(b & 0x0f, 1);
    return container_count(big_endian(b == 0xdc ? 2 : 4), 1);
}

uint32_t Reader::map() {
    Kind k = peek();
    if (k != Kind::map) throw type_error("map", k);
    uint8_t b = byte();
    if (b >= 0x80 && b <= 0x8f) return container_count(b & 0x0f, 2);
    return container_count(big_endian(b == 0xde ? 2 : 4), 2);
}

void Reader::skip() { skip(0); }

void Reader::skip(int depth) {
    if (depth > max_depth) throw DecodeError("nesting too deep");
    Kind k = peek();
    switch (k) {
        case Kind::nil: nil(); return;
        case Kind::boolean: boolean(); return;
        case Kind::uint: uint(); return;
        case Kind::sint: sint(); return;
        case Kind::float64: float64(); return;
        case Kind::str: str(); return;
        case Kind::bin: {
            uint8_t b = byte();
            take(big_endian(b == 0xc4 ? 1 : b == 0xc5 ? 2 : 4));
            return;
        }
        case Kind::ext: {
            uint8_t b = byte();
            uint64_t n;
            switch (b) {
                case 0xd4: n = 1; break;
                case 0xd5: n = 2; break;
                case 0xd6: n = 4; break;
                case 0xd7: n = 8; break;
                case 0xd8: n = 16; break;
                default: n = big_endian(b == 0xc7 ? 1 : b == 0xc8 ? 2 : 4);
            }
            take(n + 1);  // the type byte, then the data
            return;
        }
        case Kind::array: {
            for (uint32_t n = array(); n > 0; --n) skip(depth + 1);
            return;
        }
        case Kind::map: {
            for (uint32_t n = map(); n > 0; --n) {
                skip(depth + 1);
                skip(depth + 1);
            }
            return;
        }
    }
}

}  // namespace dpengine::msgpack
