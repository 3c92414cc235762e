// The head's reading of a client's request body (head/request_body.hpp): any bytes, with and
// without the model-name mapping. A routed body must be the input itself, or the input with
// only the value of "model" replaced.
#include "head/request_body.hpp"

#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view body(reinterpret_cast<const char*>(data), size);
    using namespace dpengine::head;
    auto same = route_body(body, ModelNames{"m", ""});
    if (auto* routed = std::get_if<RoutedBody>(&same); routed && routed->body != body) std::abort();
    auto mapped = route_body(body, ModelNames{"m", "served/model"});
    if (auto* routed = std::get_if<RoutedBody>(&mapped)) {
        auto [first, last] = member_value_span(body, "model");
        if (first == std::string_view::npos) {
            if (routed->body != body) std::abort();
        } else if (routed->body.substr(0, first) != body.substr(0, first) ||
                   routed->body.substr(routed->body.size() - (body.size() - last)) != body.substr(last)) {
            std::abort();
        }
    }
    return 0;
}
