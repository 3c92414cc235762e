// Every wire message type through the decoder the head and the ranks apply to each frame.
// A decoded message must encode to bytes that decode again to the same encoding: what the
// decoder accepts, the encoder can represent.
#include "core/wire.hpp"

#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view bytes(reinterpret_cast<const char*>(data), size);
    auto decoded = dpengine::wire::decode(bytes);
    if (!decoded) {
        if (decoded.error().code.empty()) {
            std::fprintf(stderr, "decode error without a reason code: %s\n", decoded.error().message.c_str());
            std::abort();
        }
        return 0;
    }
    std::string once = dpengine::wire::encode(decoded->message, decoded->epoch);
    auto again = dpengine::wire::decode(once);
    if (!again) {
        std::fprintf(stderr, "re-encoded %s does not decode: %s\n", dpengine::wire::type_name(decoded->message),
                     again.error().message.c_str());
        std::abort();
    }
    if (dpengine::wire::encode(again->message, again->epoch) != once) {
        std::fprintf(stderr, "%s does not survive a round trip\n", dpengine::wire::type_name(decoded->message));
        std::abort();
    }
    return 0;
}
