#include "api_error.hpp"

#include "utf8.hpp"

#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <string_view>

namespace dpengine::openai {
namespace {

namespace json = boost::json;

json::string valid_utf8(std::string_view s) {
    std::string storage;
    std::string_view text = utf8::repaired(s, storage);
    return json::string(json::string_view(text.data(), text.size()));
}

json::value nullable(const std::string& s) { return s.empty() ? json::value(nullptr) : json::value(valid_utf8(s)); }

}  // namespace

std::string error_body(const HttpError& error) {
    const json::object body = {{"error",
                                {{"message", valid_utf8(error.message)},
                                 {"type", valid_utf8(error.type)},
                                 {"param", nullable(error.param)},
                                 {"code", nullable(error.code)}}}};
    return json::serialize(body);
}

std::string stream_error_event(const HttpError& error) { return "data: " + error_body(error) + "\n\n"; }

}  // namespace dpengine::openai
