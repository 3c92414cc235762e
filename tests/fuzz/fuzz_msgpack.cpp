// The msgpack reader on its own: every read the wire decoder can ask for, in the order the
// input's own type bytes suggest, so that type confusion and lengths past the end are tried on
// every kind of value. Only DecodeError may come out.
#include "core/msgpack.hpp"

using dpengine::msgpack::DecodeError;
using dpengine::msgpack::Kind;
using dpengine::msgpack::Reader;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view bytes(reinterpret_cast<const char*>(data), size);
    Reader reader(bytes);
    // Bounded: each step consumes at least one byte or throws.
    for (size_t step = 0; step < size + 1 && !reader.at_end(); ++step) {
        try {
            Kind kind = reader.peek();
            // Odd steps ask for a type other than the one present, to check the refusals.
            bool mismatch = step % 2 == 1;
            switch (mismatch ? Kind((static_cast<int>(kind) + step) % 10) : kind) {
                case Kind::nil: reader.nil(); break;
                case Kind::boolean: reader.boolean(); break;
                case Kind::uint: reader.uint(); break;
                case Kind::sint: reader.sint(); break;
                case Kind::float64: reader.float64(); break;
                case Kind::str: reader.str(); break;
                case Kind::array: reader.array(); break;
                case Kind::map: reader.map(); break;
                case Kind::bin:
                case Kind::ext: reader.skip(); break;
            }
        } catch (const DecodeError&) {
            Reader skipper(bytes.substr(step % (size + 1)));
            try {
                while (!skipper.at_end()) skipper.skip();
            } catch (const DecodeError&) {
            }
            return 0;
        }
    }
    return 0;
}
