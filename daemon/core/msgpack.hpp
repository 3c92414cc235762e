// A small MessagePack encoder and a bounded, typed decoder for the wire protocol.
// The decoder never builds a generic object tree: callers ask for the type they expect and
// get a DecodeError otherwise. Lengths are checked against the bytes left before anything is
// allocated, and nesting is bounded, so hostile input costs at most its own size.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace dpengine::msgpack {

// Thrown inside the wire module only; wire::decode turns it into an Error value.
struct DecodeError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

class Writer {
public:
    explicit Writer(std::string& out) : out_(out) {}
    void nil();
    void boolean(bool v);
    void uint(uint64_t v);
    void sint(int64_t v);
    void float64(double v);
    void str(std::string_view v);
    void bin(std::string_view v);  // bytes that need not be UTF-8 (request and response bodies)
    void array(uint32_t count);
    void map(uint32_t count);

private:
    void header(uint8_t fix_base, uint8_t fix_limit, uint8_t code8, uint8_t code16, uint8_t code32, uint32_t n);
    void big_endian(uint64_t v, int bytes);
    std::string& out_;
};

enum class Kind { nil, boolean, uint, sint, float64, str, bin, array, map, ext };

class Reader {
public:
    explicit Reader(std::string_view in) : in_(in) {}

    Kind peek() const;
    bool at_end() const { return pos_ == in_.size(); }

    void nil();
    bool boolean();
    uint64_t uint();   // also accepts non-negative signed encodings
    int64_t sint();    // also accepts unsigned encodings that fit
    double float64();  // also accepts integers and float32
    std::string_view str();
    std::string_view bin();  // bin, or str (a peer may send text either way)
    uint32_t array();        // returns the element count; the elements follow
    uint32_t map();          // returns the pair count; the pairs follow
    void skip();             // any one value, nested ones included (bounded depth)
    bool try_nil();          // consumes a nil if one is next

private:
    uint8_t byte();
    uint64_t big_endian(int bytes);
    std::string_view take(uint64_t n);
    uint32_t container_count(uint64_t n, uint64_t min_element_bytes);
    void skip(int depth);
    std::string_view in_;
    size_t pos_ = 0;
};

}  // namespace dpengine::msgpack
