#include "request_body.hpp"

#include "core/utf8.hpp"

#include <boost/json/parser.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

namespace dpengine::head {
namespace {

namespace json = boost::json;

constexpr size_t max_depth = 32;

size_t skip_space(std::string_view s, size_t i) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
    return i;
}

// s[i] is the opening quote; returns the index after the closing one.
size_t skip_string(std::string_view s, size_t i) {
    for (++i; i < s.size(); ++i) {
        if (s[i] == '\\') ++i;
        else if (s[i] == '"') return i + 1;
    }
    return s.size();
}

// Skips one value of valid JSON starting at s[i] (no leading space).
size_t skip_value(std::string_view s, size_t i) {
    if (i >= s.size()) return i;
    if (s[i] == '"') return skip_string(s, i);
    if (s[i] == '{' || s[i] == '[') {
        size_t depth = 0;
        while (i < s.size()) {
            char c = s[i];
            if (c == '"') {
                i = skip_string(s, i);
                continue;
            }
            if (c == '{' || c == '[') ++depth;
            if ((c == '}' || c == ']') && --depth == 0) return i + 1;
            ++i;
        }
        return i;
    }
    while (i < s.size() && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' &&
           s[i] != '\r')
        ++i;
    return i;
}

openai::HttpError invalid(std::string message, std::string param = {}) {
    return openai::HttpError{.message = std::move(message), .param = std::move(param)};
}

// A member that is a non-negative integer (1 and 1.0 alike); nothing for anything else, which
// is the engine's to refuse.
std::optional<uint64_t> count_member(const json::object& object, std::string_view key) {
    const json::value* v = object.if_contains(key);
    if (!v) return std::nullopt;
    if (v->is_uint64()) return v->get_uint64();
    if (v->is_int64() && v->get_int64() >= 0) return static_cast<uint64_t>(v->get_int64());
    if (!v->is_double()) return std::nullopt;
    double d = v->get_double();
    if (d >= 0 && d < 1e18 && std::floor(d) == d) return static_cast<uint64_t>(d);
    return std::nullopt;
}

std::optional<uint64_t> token_limit(const json::object& object) {
    auto max_tokens = count_member(object, "max_tokens"),
         max_completion = count_member(object, "max_completion_tokens");
    if (!max_tokens && !max_completion) return std::nullopt;
    uint64_t per_choice = std::max(max_tokens.value_or(0), max_completion.value_or(0));
    uint64_t choices =
        std::max<uint64_t>({1, count_member(object, "n").value_or(1), count_member(object, "best_of").value_or(1)});
    uint64_t limit;
    if (__builtin_mul_overflow(per_choice, choices, &limit)) return std::numeric_limits<uint64_t>::max();
    return limit;
}

}  // namespace

std::pair<size_t, size_t> member_value_span(std::string_view s, std::string_view key) {
    constexpr auto none = std::pair{std::string_view::npos, std::string_view::npos};
    size_t i = skip_space(s, 0);
    if (i >= s.size() || s[i] != '{') return none;
    i = skip_space(s, i + 1);
    while (i < s.size() && s[i] == '"') {
        size_t key_end = skip_string(s, i);
        bool match = key_end - i == key.size() + 2 && s.substr(i + 1, key.size()) == key;
        i = skip_space(s, key_end);
        if (i >= s.size() || s[i] != ':') return none;
        i = skip_space(s, i + 1);
        size_t value_end = skip_value(s, i);
        if (match) return {i, value_end};
        i = skip_space(s, value_end);
        if (i >= s.size() || s[i] != ',') return none;
        i = skip_space(s, i + 1);
    }
    return none;
}

std::variant<RoutedBody, openai::HttpError> route_body(std::string_view body, const ModelNames& names) {
    json::parse_options options;
    options.max_depth = max_depth;  // also bounds the parser's stack on hostile input
    json::parser parser(json::storage_ptr(), options);
    boost::system::error_code ec;
    parser.write(body.data(), body.size(), ec);
    if (ec == json::error::too_deep)
        return invalid("request body nests deeper than " + std::to_string(max_depth) + " levels");
    if (ec)
        return invalid("request body is not valid JSON: " + (utf8::is_valid(body) ? ec.message() : "invalid UTF-8"));
    json::value root = parser.release();
    const json::object* object = root.if_object();
    if (!object) return invalid("request body must be a JSON object");

    RoutedBody routed;
    if (const json::value* stream = object->if_contains("stream"))
        routed.stream = stream->is_bool() && stream->get_bool();
    routed.token_limit = token_limit(*object);
    const json::value* model = object->if_contains("model");
    if (!model) {
        routed.body = body;
        return routed;
    }
    if (!model->is_string()) return invalid("'model' must be a string", "model");
    if (model->get_string() != names.model) {
        return openai::HttpError{.status = 404,
                                 .type = "not_found_error",
                                 .message = "The model '" + std::string(model->get_string()) +
                                     "' does not exist; this server serves '" + names.model + "'",
                                 .param = "model",
                                 .code = "model_not_found"};
    }
    if (names.served.empty() || names.served == names.model) {
        routed.body = body;
        return routed;
    }
    auto [first, last] = member_value_span(body, "model");
    if (first == std::string_view::npos) {
        // "model" was written with escapes in its key: leave the body as the client wrote it
        // rather than guess; the engine answers for its own name.
        routed.body = body;
        return routed;
    }
    routed.body.reserve(body.size() + names.served.size());
    routed.body.append(body.substr(0, first));
    routed.body.append(json::serialize(json::value(names.served)));
    routed.body.append(body.substr(last));
    return routed;
}

}  // namespace dpengine::head
