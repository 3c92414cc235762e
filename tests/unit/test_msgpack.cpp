// Unit tests for the msgpack Writer/Reader (daemon/core/msgpack.hpp).
#include "core/msgpack.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

using namespace dpengine::msgpack;

namespace {

// Builds a byte string from a list of byte values.
std::string bytes(std::initializer_list<int> list) {
    std::string out;
    for (int b : list) out.push_back(static_cast<char>(b));
    return out;
}

std::string enc_uint(uint64_t v) {
    std::string out;
    Writer(out).uint(v);
    return out;
}

std::string enc_sint(int64_t v) {
    std::string out;
    Writer(out).sint(v);
    return out;
}

std::string enc_str(std::string_view v) {
    std::string out;
    Writer(out).str(v);
    return out;
}

uint8_t first(const std::string& s) { return static_cast<uint8_t>(s.at(0)); }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips and size classes
// ---------------------------------------------------------------------------------------------

TEST_CASE("msgpack: nil and booleans encode to their single bytes and round trip", "[msgpack]") {
    std::string out;
    Writer w(out);
    w.nil();
    w.boolean(false);
    w.boolean(true);
    CHECK(out == bytes({0xc0, 0xc2, 0xc3}));

    Reader r(out);
    CHECK(r.peek() == Kind::nil);
    r.nil();
    CHECK(r.peek() == Kind::boolean);
    CHECK(r.boolean() == false);
    CHECK(r.boolean() == true);
    CHECK(r.at_end());
}

TEST_CASE("msgpack: try_nil consumes only a nil", "[msgpack]") {
    std::string buf = bytes({0xc0, 0x05});
    Reader r(buf);
    CHECK(r.try_nil());
    CHECK_FALSE(r.try_nil());
    CHECK(r.uint() == 5);
    CHECK(r.at_end());
    CHECK_THROWS_AS(r.try_nil(), DecodeError);  // nothing left
}

TEST_CASE("msgpack: unsigned integers use the smallest size class and round trip", "[msgpack]") {
    struct Case {
        uint64_t value;
        size_t size;
        int first_byte;  // -1: the value itself (positive fixint)
    };
    const std::vector<Case> cases = {
        {0, 1, -1},
        {1, 1, -1},
        {0x7f, 1, -1},
        {0x80, 2, 0xcc},
        {0xff, 2, 0xcc},
        {0x100, 3, 0xcd},
        {0xffff, 3, 0xcd},
        {0x10000, 5, 0xce},
        {0xffffffffULL, 5, 0xce},
        {0x100000000ULL, 9, 0xcf},
        {0x0123456789abcdefULL, 9, 0xcf},
        {std::numeric_limits<uint64_t>::max(), 9, 0xcf},
    };
    for (const auto& c : cases) {
        INFO("value " << c.value);
        std::string buf = enc_uint(c.value);
        CHECK(buf.size() == c.size);
        CHECK(first(buf) == (c.first_byte < 0 ? c.value : static_cast<uint64_t>(c.first_byte)));
        Reader r(buf);
        CHECK(r.peek() == Kind::uint);
        CHECK(r.uint() == c.value);
        CHECK(r.at_end());
        // sint() accepts unsigned encodings that fit in int64.
        if (c.value <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
            Reader r2(buf);
            CHECK(r2.sint() == static_cast<int64_t>(c.value));
            CHECK(r2.at_end());
        }
        // float64() accepts integers.
        Reader r3(buf);
        CHECK(r3.float64() == static_cast<double>(c.value));
        CHECK(r3.at_end());
    }
}

TEST_CASE("msgpack: unsigned integers are big-endian on the wire", "[msgpack]") {
    CHECK(enc_uint(0x1234) == bytes({0xcd, 0x12, 0x34}));
    CHECK(enc_uint(0x12345678) == bytes({0xce, 0x12, 0x34, 0x56, 0x78}));
    CHECK(enc_uint(0x0102030405060708ULL) == bytes({0xcf, 1, 2, 3, 4, 5, 6, 7, 8}));
    CHECK(enc_uint(200) == bytes({0xcc, 200}));
}

TEST_CASE("msgpack: signed integers round trip across all size classes", "[msgpack]") {
    const std::vector<int64_t> values = {0,
                                         1,
                                         127,
                                         128,
                                         255,
                                         256,
                                         65535,
                                         65536,
                                         -1,
                                         -5,
                                         -31,
                                         -32,
                                         -33,
                                         -127,
                                         -128,
                                         -129,
                                         -32767,
                                         -32768,
                                         -32769,
                                         -2147483647LL,
                                         -2147483648LL,
                                         -2147483649LL,
                                         std::numeric_limits<int64_t>::min(),
                                         std::numeric_limits<int64_t>::min() + 1,
                                         std::numeric_limits<int64_t>::max()};
    for (int64_t v : values) {
        INFO("value " << v);
        std::string buf = enc_sint(v);
        CHECK(buf.size() <= 9);
        Reader r(buf);
        CHECK(r.peek() == (v >= 0 ? Kind::uint : Kind::sint));
        CHECK(r.sint() == v);
        CHECK(r.at_end());
        Reader r2(buf);
        CHECK(r2.float64() == static_cast<double>(v));
    }
}

TEST_CASE("msgpack: negative fixint is one byte", "[msgpack]") {
    CHECK(enc_sint(-1) == bytes({0xff}));
    CHECK(enc_sint(-32) == bytes({0xe0}));
    CHECK(enc_sint(5) == bytes({0x05}));  // non-negative values use the unsigned encodings
    CHECK(enc_sint(-33).size() > 1);
}

TEST_CASE("msgpack: the reader decodes every signed encoding other writers may use", "[msgpack]") {
    struct Case {
        std::string buf;
        int64_t value;
    };
    const std::vector<Case> cases = {
        {bytes({0xd0, 0x80}), -128},
        {bytes({0xd0, 0x7f}), 127},
        {bytes({0xd0, 0xff}), -1},
        {bytes({0xd1, 0x80, 0x00}), -32768},
        {bytes({0xd1, 0x7f, 0xff}), 32767},
        {bytes({0xd1, 0xff, 0xfe}), -2},
        {bytes({0xd2, 0x80, 0x00, 0x00, 0x00}), std::numeric_limits<int32_t>::min()},
        {bytes({0xd2, 0xff, 0xff, 0xff, 0xfd}), -3},
        {bytes({0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}), std::numeric_limits<int64_t>::min()},
        {bytes({0xd3, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}), std::numeric_limits<int64_t>::max()},
        {bytes({0xe0}), -32},
        {bytes({0xf0}), -16},
    };
    for (const auto& c : cases) {
        INFO("value " << c.value);
        Reader r(c.buf);
        CHECK(r.peek() == Kind::sint);
        CHECK(r.sint() == c.value);
        CHECK(r.at_end());
    }
}

TEST_CASE("msgpack: uint() accepts non-negative signed encodings and refuses negative ones", "[msgpack]") {
    {
        std::string buf = bytes({0xd0, 0x05});
        Reader r(buf);
        CHECK(r.uint() == 5);
        CHECK(r.at_end());
    }
    {
        std::string buf = bytes({0xd3, 0, 0, 0, 1, 0, 0, 0, 0});
        Reader r(buf);
        CHECK(r.uint() == 0x100000000ULL);
    }
    for (const std::string& buf : {bytes({0xd0, 0xff}), bytes({0xff}), bytes({0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0}),
                                   bytes({0xd2, 0xff, 0xff, 0xff, 0xff})}) {
        Reader r(buf);
        try {
            (void)r.uint();
            FAIL("a negative integer was accepted as unsigned");
        } catch (const DecodeError& e) {
            CHECK_THAT(e.what(), Catch::Contains("negative"));
        }
    }
}

TEST_CASE("msgpack: sint() refuses unsigned values above INT64_MAX", "[msgpack]") {
    std::string buf = enc_uint(static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) + 1);
    Reader r(buf);
    CHECK_THROWS_AS(r.sint(), DecodeError);
    std::string max = enc_uint(std::numeric_limits<uint64_t>::max());
    Reader r2(max);
    CHECK_THROWS_WITH(r2.sint(), Catch::Contains("range"));
}

TEST_CASE("msgpack: float64 round trips bit-exactly", "[msgpack]") {
    const std::vector<double> values = {0.0,
                                        1.0,
                                        -1.5,
                                        3.141592653589793,
                                        1e-300,
                                        std::numeric_limits<double>::max(),
                                        std::numeric_limits<double>::lowest(),
                                        std::numeric_limits<double>::denorm_min(),
                                        std::numeric_limits<double>::infinity(),
                                        -std::numeric_limits<double>::infinity()};
    for (double v : values) {
        INFO("value " << v);
        std::string buf;
        Writer(buf).float64(v);
        CHECK(buf.size() == 9);
        CHECK(first(buf) == 0xcb);
        Reader r(buf);
        CHECK(r.peek() == Kind::float64);
        CHECK(r.float64() == v);
        CHECK(r.at_end());
    }
    SECTION("negative zero keeps its sign") {
        std::string buf;
        Writer(buf).float64(-0.0);
        Reader r(buf);
        double d = r.float64();
        CHECK(d == 0.0);
        CHECK(std::signbit(d));
    }
    SECTION("NaN stays NaN") {
        std::string buf;
        Writer(buf).float64(std::numeric_limits<double>::quiet_NaN());
        Reader r(buf);
        CHECK(std::isnan(r.float64()));
    }
    SECTION("1.0 is encoded as IEEE 754 big-endian") {
        std::string buf;
        Writer(buf).float64(1.0);
        CHECK(buf == bytes({0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0}));
    }
}

TEST_CASE("msgpack: float32 values are decoded", "[msgpack]") {
    {
        std::string buf = bytes({0xca, 0x3f, 0xc0, 0x00, 0x00});  // 1.5f
        Reader r(buf);
        CHECK(r.peek() == Kind::float64);
        CHECK(r.float64() == 1.5);
        CHECK(r.at_end());
    }
    {
        std::string buf = bytes({0xca, 0x40, 0x49, 0x0f, 0xdb});  // (float)pi
        Reader r(buf);
        CHECK(r.float64() == static_cast<double>(3.14159274f));
    }
    {
        std::string buf = bytes({0xca, 0xc1, 0x20, 0x00, 0x00});  // -10.0f
        Reader r(buf);
        CHECK(r.float64() == -10.0);
    }
    {
        std::string buf = bytes({0xca, 0x3f, 0xc0, 0x00});  // truncated
        Reader r(buf);
        CHECK_THROWS_AS(r.float64(), DecodeError);
    }
}

TEST_CASE("msgpack: strings use fixstr, str8, str16 and str32 and round trip", "[msgpack]") {
    struct Case {
        size_t length;
        size_t header;
        int first_byte;  // -1: fixstr 0xa0|length
    };
    const std::vector<Case> cases = {
        {0, 1, -1},     {1, 1, -1},       {31, 1, -1},      {32, 2, 0xd9},     {255, 2, 0xd9},
        {256, 3, 0xda}, {65535, 3, 0xda}, {65536, 5, 0xdb}, {100000, 5, 0xdb},
    };
    for (const auto& c : cases) {
        INFO("length " << c.length);
        std::string value(c.length, 'x');
        for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>('a' + i % 26);
        std::string buf = enc_str(value);
        CHECK(buf.size() == c.header + c.length);
        CHECK(first(buf) == (c.first_byte < 0 ? 0xa0u | c.length : static_cast<unsigned>(c.first_byte)));
        Reader r(buf);
        CHECK(r.peek() == Kind::str);
        CHECK(r.str() == value);
        CHECK(r.at_end());
    }
}

TEST_CASE("msgpack: strings carry arbitrary bytes, including NUL and UTF-8", "[msgpack]") {
    std::string value("a\0b\xff\xc3\xa9\xe6\x97\xa5", 9);
    std::string buf;
    Writer w(buf);
    w.str(value);
    w.str("after");
    Reader r(buf);
    CHECK(r.str() == value);
    CHECK(r.str() == "after");
    CHECK(r.at_end());
}

TEST_CASE("msgpack: the reader decodes str8/16/32 headers for short strings", "[msgpack]") {
    // Other encoders may use a bigger header than needed.
    for (const std::string& buf :
         {bytes({0xd9, 2, 'h', 'i'}), bytes({0xda, 0, 2, 'h', 'i'}), bytes({0xdb, 0, 0, 0, 2, 'h', 'i'})}) {
        Reader r(buf);
        CHECK(r.str() == "hi");
        CHECK(r.at_end());
    }
}

TEST_CASE("msgpack: arrays and maps use fix, 16 and 32 headers and round trip", "[msgpack]") {
    struct Case {
        uint32_t count;
        size_t header;
        int first_byte;  // -1: fix
    };
    const std::vector<Case> cases = {
        {0, 1, -1},     {1, 1, -1},       {15, 1, -1},      {16, 3, 0xdc},    {255, 3, 0xdc},
        {256, 3, 0xdc}, {65535, 3, 0xdc}, {65536, 5, 0xdd}, {70000, 5, 0xdd},
    };
    for (const auto& c : cases) {
        INFO("count " << c.count);
        SECTION("array of " + std::to_string(c.count)) {
            std::string buf;
            Writer w(buf);
            w.array(c.count);
            CHECK(buf.size() == c.header);
            CHECK(first(buf) == (c.first_byte < 0 ? 0x90u | c.count : static_cast<unsigned>(c.first_byte)));
            for (uint32_t i = 0; i < c.count; ++i) w.uint(i % 100);
            Reader r(buf);
            CHECK(r.peek() == Kind::array);
            REQUIRE(r.array() == c.count);
            bool all = true;
            for (uint32_t i = 0; i < c.count; ++i) all = all && r.uint() == i % 100;
            CHECK(all);
            CHECK(r.at_end());
            Reader skipper(buf);
            skipper.skip();
            CHECK(skipper.at_end());
        }
        SECTION("map of " + std::to_string(c.count)) {
            std::string buf;
            Writer w(buf);
            w.map(c.count);
            CHECK(buf.size() == c.header);
            int map16 = c.first_byte < 0 ? -1 : c.first_byte == 0xdc ? 0xde : 0xdf;
            CHECK(first(buf) == (map16 < 0 ? 0x80u | c.count : static_cast<unsigned>(map16)));
            for (uint32_t i = 0; i < c.count; ++i) {
                w.uint(i % 100);
                w.boolean(i % 2 == 0);
            }
            Reader r(buf);
            CHECK(r.peek() == Kind::map);
            REQUIRE(r.map() == c.count);
            bool all = true;
            for (uint32_t i = 0; i < c.count; ++i) {
                all = all && r.uint() == i % 100;
                all = all && r.boolean() == (i % 2 == 0);
            }
            CHECK(all);
            CHECK(r.at_end());
            Reader skipper(buf);
            skipper.skip();
            CHECK(skipper.at_end());
        }
    }
}

TEST_CASE("msgpack: nested containers round trip", "[msgpack]") {
    std::string buf;
    Writer w(buf);
    w.map(2);
    w.str("list");
    w.array(3);
    w.uint(1);
    w.sint(-2);
    w.array(0);
    w.str("inner");
    w.map(1);
    w.str("k");
    w.nil();

    Reader r(buf);
    REQUIRE(r.map() == 2);
    CHECK(r.str() == "list");
    REQUIRE(r.array() == 3);
    CHECK(r.uint() == 1);
    CHECK(r.sint() == -2);
    CHECK(r.array() == 0);
    CHECK(r.str() == "inner");
    REQUIRE(r.map() == 1);
    CHECK(r.str() == "k");
    r.nil();
    CHECK(r.at_end());
}

TEST_CASE("msgpack: peek names every kind", "[msgpack]") {
    struct Case {
        std::string buf;
        Kind kind;
    };
    const std::vector<Case> cases = {
        {bytes({0x00}), Kind::uint},    {bytes({0x7f}), Kind::uint},    {bytes({0xcc}), Kind::uint},
        {bytes({0xcf}), Kind::uint},    {bytes({0xe0}), Kind::sint},    {bytes({0xff}), Kind::sint},
        {bytes({0xd0}), Kind::sint},    {bytes({0xd3}), Kind::sint},    {bytes({0x80}), Kind::map},
        {bytes({0x8f}), Kind::map},     {bytes({0xde}), Kind::map},     {bytes({0xdf}), Kind::map},
        {bytes({0x90}), Kind::array},   {bytes({0x9f}), Kind::array},   {bytes({0xdc}), Kind::array},
        {bytes({0xdd}), Kind::array},   {bytes({0xa0}), Kind::str},     {bytes({0xbf}), Kind::str},
        {bytes({0xd9}), Kind::str},     {bytes({0xdb}), Kind::str},     {bytes({0xc0}), Kind::nil},
        {bytes({0xc2}), Kind::boolean}, {bytes({0xc3}), Kind::boolean}, {bytes({0xc4}), Kind::bin},
        {bytes({0xc6}), Kind::bin},     {bytes({0xca}), Kind::float64}, {bytes({0xcb}), Kind::float64},
        {bytes({0xc7}), Kind::ext},     {bytes({0xc9}), Kind::ext},     {bytes({0xd4}), Kind::ext},
        {bytes({0xd8}), Kind::ext},
    };
    for (const auto& c : cases) {
        INFO("byte " << static_cast<int>(first(c.buf)));
        Reader r(c.buf);
        CHECK(r.peek() == c.kind);
        CHECK_FALSE(r.at_end());  // peek consumes nothing
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

TEST_CASE("msgpack: the never-used type byte 0xc1 is refused", "[msgpack]") {
    std::string buf = bytes({0xc1});
    Reader r(buf);
    CHECK_THROWS_AS(r.peek(), DecodeError);
    Reader r2(buf);
    CHECK_THROWS_AS(r2.skip(), DecodeError);
    Reader r3(buf);
    CHECK_THROWS_AS(r3.uint(), DecodeError);
}

TEST_CASE("msgpack: a typed read of the wrong type throws a DecodeError naming both types", "[msgpack]") {
    const std::string a_str = enc_str("x");
    const std::string a_uint = enc_uint(7);
    const std::string a_neg = enc_sint(-7);
    const std::string a_nil = bytes({0xc0});
    const std::string a_bool = bytes({0xc3});
    const std::string an_array = bytes({0x90});
    const std::string a_map = bytes({0x80});
    const std::string a_float = bytes({0xcb, 0, 0, 0, 0, 0, 0, 0, 0});
    const std::string a_bin = bytes({0xc4, 0x01, 0x00});

    auto expect = [](const std::string& buf, auto&& read, const char* want, const char* got) {
        Reader r(buf);
        try {
            read(r);
            FAIL("no DecodeError; wanted '" << want << "' from a '" << got << "'");
        } catch (const DecodeError& e) {
            std::string what = e.what();
            INFO(what);
            CHECK_THAT(what, Catch::Contains(want));
            CHECK_THAT(what, Catch::Contains(got));
        }
    };

    expect(
        a_uint, [](Reader& r) { (void)r.str(); }, "string", "unsigned integer");
    expect(
        a_str, [](Reader& r) { (void)r.uint(); }, "unsigned integer", "string");
    expect(
        a_str, [](Reader& r) { (void)r.sint(); }, "integer", "string");
    expect(
        a_neg, [](Reader& r) { (void)r.uint(); }, "unsigned integer", "negative integer");
    expect(
        a_nil, [](Reader& r) { (void)r.boolean(); }, "boolean", "nil");
    expect(
        a_bool, [](Reader& r) { r.nil(); }, "nil", "boolean");
    expect(
        a_map, [](Reader& r) { (void)r.array(); }, "array", "map");
    expect(
        an_array, [](Reader& r) { (void)r.map(); }, "map", "array");
    expect(
        a_str, [](Reader& r) { (void)r.float64(); }, "float", "string");
    expect(
        a_float, [](Reader& r) { (void)r.uint(); }, "unsigned integer", "float");
    expect(
        a_float, [](Reader& r) { (void)r.str(); }, "string", "float");
    expect(
        a_bin, [](Reader& r) { (void)r.str(); }, "string", "binary");
    expect(
        a_bool, [](Reader& r) { (void)r.array(); }, "array", "boolean");
}

TEST_CASE("msgpack: every read of an empty buffer throws", "[msgpack]") {
    std::string empty;
    CHECK_THROWS_AS(Reader(empty).peek(), DecodeError);
    CHECK_THROWS_AS(Reader(empty).nil(), DecodeError);
    CHECK_THROWS_AS(Reader(empty).boolean(), DecodeError);
    CHECK_THROWS_AS(Reader(empty).uint(), DecodeError);
    CHECK_THROWS_AS(Reader(empty).sint(), DecodeError);
    CHECK_THROWS_AS(Reader(empty).float64(), DecodeError);
    CHECK_THROWS_AS(Reader(empty).str(), DecodeError);
    CHECK_THROWS_AS(Reader(empty).array(), DecodeError);
    CHECK_THROWS_AS(Reader(empty).map(), DecodeError);
    CHECK_THROWS_AS(Reader(empty).skip(), DecodeError);
    CHECK(Reader(empty).at_end());
    CHECK_THROWS_WITH(Reader(empty).uint(), Catch::Contains("truncated"));
}

TEST_CASE("msgpack: every proper prefix of a value is refused as truncated", "[msgpack]") {
    std::vector<std::string> values;
    values.push_back(enc_uint(0x80));
    values.push_back(enc_uint(0x1234));
    values.push_back(enc_uint(0x12345678));
    values.push_back(enc_uint(0x123456789aULL));
    values.push_back(enc_sint(-1000));
    values.push_back(bytes({0xd0, 0x80}));
    values.push_back(bytes({0xd1, 0x80, 0x00}));
    values.push_back(bytes({0xd2, 0x80, 0, 0, 0}));
    values.push_back(bytes({0xca, 0x3f, 0xc0, 0, 0}));
    {
        std::string f;
        Writer(f).float64(2.5);
        values.push_back(f);
    }
    values.push_back(enc_str("hello"));
    values.push_back(enc_str(std::string(40, 'a')));
    values.push_back(enc_str(std::string(300, 'b')));
    values.push_back(enc_str(std::string(70000, 'c')));
    values.push_back(bytes({0xc4, 3, 1, 2, 3}));
    values.push_back(bytes({0xc7, 2, 9, 1, 2}));
    values.push_back(bytes({0xd6, 9, 1, 2, 3, 4}));
    {
        std::string nested;
        Writer w(nested);
        w.array(2);
        w.map(1);
        w.str("key");
        w.uint(1000);
        w.str("tail");
        values.push_back(nested);
    }

    for (const auto& v : values) {
        // A generic skip of the whole value must see every truncation.
        size_t step = v.size() > 1000 ? 997 : 1;
        for (size_t n = 0; n < v.size(); n += step) {
            INFO("value of " << v.size() << " bytes cut to " << n);
            Reader r(std::string_view(v).substr(0, n));
            CHECK_THROWS_AS(r.skip(), DecodeError);
        }
        Reader whole(v);
        CHECK_NOTHROW(whole.skip());
        CHECK(whole.at_end());
    }
}

TEST_CASE("msgpack: typed reads of truncated values throw", "[msgpack]") {
    CHECK_THROWS_WITH(Reader(bytes({0xcd, 0x01})).uint(), Catch::Contains("truncated"));
    CHECK_THROWS_AS(Reader(bytes({0xcf, 0, 0, 0})).uint(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xd3, 0xff})).sint(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xcb, 0x3f, 0xf0})).float64(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xa5, 'a', 'b', 'c'})).str(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xd9})).str(), DecodeError);        // str8 without its length
    CHECK_THROWS_AS(Reader(bytes({0xda, 0x00})).str(), DecodeError);  // str16 half a length
    CHECK_THROWS_AS(Reader(bytes({0xdc, 0x00})).array(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xdf, 0x00, 0x00, 0x00})).map(), DecodeError);
}

TEST_CASE("msgpack: string lengths larger than the bytes left are refused", "[msgpack]") {
    // Headers claiming far more than the buffer holds; the decoder must not try to allocate
    // or read that much.
    CHECK_THROWS_WITH(Reader(bytes({0xdb, 0xff, 0xff, 0xff, 0xff})).str(), Catch::Contains("length"));
    CHECK_THROWS_AS(Reader(bytes({0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b'})).str(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xda, 0xff, 0xff, 'a'})).str(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xd9, 0x03, 'a', 'b'})).str(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xbf, 'a'})).str(), DecodeError);
    // Exactly the bytes left is fine.
    std::string ok = bytes({0xd9, 0x02, 'a', 'b'});
    Reader exact(ok);
    CHECK(exact.str() == "ab");
    CHECK(exact.at_end());
}

TEST_CASE("msgpack: container counts larger than the bytes left are refused at the header", "[msgpack]") {
    SECTION("array32 claiming 2^32-1 elements in a 5-byte buffer") {
        std::string buf = bytes({0xdd, 0xff, 0xff, 0xff, 0xff});
        Reader r(buf);
        CHECK_THROWS_WITH(r.array(), Catch::Contains("exceeds"));
        Reader s(buf);
        CHECK_THROWS_AS(s.skip(), DecodeError);
    }
    SECTION("map32 claiming 2^32-1 pairs") {
        std::string buf = bytes({0xdf, 0xff, 0xff, 0xff, 0xff, 0x01, 0x02});
        CHECK_THROWS_AS(Reader(buf).map(), DecodeError);
        CHECK_THROWS_AS(Reader(buf).skip(), DecodeError);
    }
    SECTION("array16 claiming more elements than bytes") {
        std::string buf = bytes({0xdc, 0x00, 0x04, 1, 2, 3});
        CHECK_THROWS_AS(Reader(buf).array(), DecodeError);
        std::string ok = bytes({0xdc, 0x00, 0x03, 1, 2, 3});
        Reader r(ok);
        CHECK(r.array() == 3);
    }
    SECTION("fixarray claiming more elements than bytes") {
        CHECK_THROWS_AS(Reader(bytes({0x93, 1, 2})).array(), DecodeError);
        std::string ok = bytes({0x93, 1, 2, 3});
        Reader r(ok);
        CHECK(r.array() == 3);
    }
    SECTION("a map of N pairs needs at least 2N bytes") {
        CHECK_THROWS_AS(Reader(bytes({0x83, 1, 2, 3, 4, 5})).map(), DecodeError);
        std::string ok = bytes({0x83, 1, 2, 3, 4, 5, 6});
        Reader r(ok);
        CHECK(r.map() == 3);
    }
}

// ---------------------------------------------------------------------------------------------
// skip(): every kind, bin and ext included, and bounded nesting
// ---------------------------------------------------------------------------------------------

TEST_CASE("msgpack: skip() consumes exactly one value of every kind", "[msgpack]") {
    std::vector<std::string> values = {
        bytes({0xc0}),
        bytes({0xc2}),
        bytes({0xc3}),
        bytes({0x05}),
        bytes({0xe5}),
        enc_uint(1u << 20),
        enc_sint(-100000),
        bytes({0xca, 0, 0, 0, 0}),
        bytes({0xcb, 0, 0, 0, 0, 0, 0, 0, 0}),
        enc_str("skip me"),
        enc_str(std::string(1000, 'z')),
        // bin 8/16/32
        bytes({0xc4, 0x00}),
        bytes({0xc4, 0x03, 0xc1, 0xc1, 0xc1}),
        bytes({0xc5, 0x00, 0x02, 0xff, 0xff}),
        bytes({0xc6, 0x00, 0x00, 0x00, 0x01, 0xc1}),
        // fixext 1/2/4/8/16 (type byte then data)
        bytes({0xd4, 0x01, 0xc1}),
        bytes({0xd5, 0x01, 0xc1, 0xc1}),
        bytes({0xd6, 0xff, 1, 2, 3, 4}),
        bytes({0xd7, 0x7f, 1, 2, 3, 4, 5, 6, 7, 8}),
        bytes({0xd8, 0x02, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}),
        // ext 8/16/32 (length, type byte, data)
        bytes({0xc7, 0x00, 0x05}),
        bytes({0xc7, 0x03, 0x05, 0xc1, 0xc1, 0xc1}),
        bytes({0xc8, 0x00, 0x02, 0x05, 0xaa, 0xbb}),
        bytes({0xc9, 0x00, 0x00, 0x00, 0x01, 0x05, 0xaa}),
    };
    {
        std::string nested;
        Writer w(nested);
        w.map(2);
        w.str("a");
        w.array(3);
        w.nil();
        w.str("x");
        w.map(1);
        w.uint(1);
        w.array(0);
        w.str("b");
        w.float64(2.0);
        values.push_back(nested);
    }
    // A map with a bin value and an ext key, as a newer peer might send.
    values.push_back(bytes({0x82, 0xa1, 'k', 0xc4, 0x01, 0x00, 0xd4, 0x01, 0x02, 0xc0}));

    for (const auto& v : values) {
        INFO("value starting with byte " << static_cast<int>(first(v)) << ", " << v.size() << " bytes");
        std::string buf = v + bytes({0x2a});  // a marker value after it
        Reader r(buf);
        r.skip();
        CHECK(r.uint() == 42);
        CHECK(r.at_end());
    }
}

TEST_CASE("msgpack: skip() refuses bin and ext lengths larger than the bytes left", "[msgpack]") {
    CHECK_THROWS_AS(Reader(bytes({0xc4, 0x05, 1, 2})).skip(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xc5, 0xff, 0xff, 1})).skip(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xc6, 0xff, 0xff, 0xff, 0xff, 1})).skip(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xc6, 0xff, 0xff})).skip(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xc7, 0x02, 0x05, 0x01})).skip(), DecodeError);  // one data byte short
    CHECK_THROWS_AS(Reader(bytes({0xc7, 0x00})).skip(), DecodeError);              // no type byte
    CHECK_THROWS_AS(Reader(bytes({0xc9, 0xff, 0xff, 0xff, 0xff, 0x05})).skip(), DecodeError);
    CHECK_THROWS_AS(Reader(bytes({0xd4, 0x01})).skip(), DecodeError);  // fixext1 without data
    CHECK_THROWS_AS(Reader(bytes({0xd8, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15})).skip(), DecodeError);
}

namespace {

std::string nested_arrays(size_t depth, bool with_leaf) {
    std::string out(depth, static_cast<char>(0x91));  // fixarray of one element
    if (with_leaf) out.push_back(0x01);
    else out.back() = static_cast<char>(0x90);  // the innermost one is empty
    return out;
}

std::string nested_maps(size_t depth) {
    std::string out;
    for (size_t i = 0; i < depth; ++i) out += bytes({0x81, 0xa1, 'k'});  // {"k": ...
    out.push_back(0x01);
    return out;
}

}  // namespace

TEST_CASE("msgpack: skip() bounds nesting depth", "[msgpack]") {
    SECTION("moderate nesting is skipped") {
        for (size_t depth : {1, 2, 8, 16}) {
            INFO("depth " << depth);
            std::string buf = nested_arrays(depth, true) + bytes({0x2a});
            Reader r(buf);
            CHECK_NOTHROW(r.skip());
            CHECK(r.uint() == 42);
            std::string maps = nested_maps(depth) + bytes({0x2a});
            Reader m(maps);
            CHECK_NOTHROW(m.skip());
            CHECK(m.uint() == 42);
        }
    }
    SECTION("deep nesting is refused with a message") {
        for (size_t depth : {64, 1000}) {
            INFO("depth " << depth);
            std::string arrays = nested_arrays(depth, true);
            Reader r(arrays);
            CHECK_THROWS_WITH(r.skip(), Catch::Contains("deep"));
            std::string empty_inside = nested_arrays(depth, false);
            Reader e(empty_inside);
            CHECK_THROWS_AS(e.skip(), DecodeError);
            std::string maps = nested_maps(depth);
            Reader m(maps);
            CHECK_THROWS_AS(m.skip(), DecodeError);
        }
    }
    SECTION("hostile nesting does not exhaust the stack") {
        // One million nested one-element arrays: a recursive decoder without a bound would
        // overflow its stack.
        std::string buf = nested_arrays(1'000'000, true);
        Reader r(buf);
        CHECK_THROWS_AS(r.skip(), DecodeError);
    }
}
