#include "placeholders.hpp"

#include <array>

namespace dpengine {
namespace {

constexpr std::array<std::string_view, 5> names = {"port", "gpu", "rank", "local_rank", "model"};

std::string value_of(std::string_view name, const PlaceholderValues& v) {
    if (name == "port") return std::to_string(v.port);
    if (name == "gpu") return v.gpu;
    if (name == "rank") return std::to_string(v.rank);
    if (name == "local_rank") return std::to_string(v.local_rank);
    return v.model;
}

Error brace_error(std::string_view text, std::string what) {
    return Error{what + " in '" + std::string(text) + "'; the placeholders are " + known_placeholders() +
                     ", and '{{' or '}}' writes a literal brace",
                 "config"};
}

}  // namespace

std::string known_placeholders() {
    std::string out;
    for (auto name : names) out += (out.empty() ? "{" : ", {") + std::string(name) + "}";
    return out;
}

Result<std::string> expand_placeholders(std::string_view text, const PlaceholderValues& values) {
    std::string out;
    out.reserve(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
        char c = text[i];
        if (c == '}') {
            if (i + 1 < text.size() && text[i + 1] == '}') {
                out += '}';
                ++i;
                continue;
            }
            return brace_error(text, "a '}' without its '{'");
        }
        if (c != '{') {
            out += c;
            continue;
        }
        if (i + 1 < text.size() && text[i + 1] == '{') {
            out += '{';
            ++i;
            continue;
        }
        size_t close = text.find('}', i + 1);
        if (close == std::string_view::npos) return brace_error(text, "a '{' without its '}'");
        std::string_view name = text.substr(i + 1, close - i - 1);
        bool known = false;
        for (auto n : names) known = known || n == name;
        if (!known) return brace_error(text, "unknown placeholder '{" + std::string(name) + "}'");
        out += value_of(name, values);
        i = close;
    }
    return out;
}

Status check_placeholders(std::string_view text) {
    auto expanded = expand_placeholders(text, PlaceholderValues{});
    if (!expanded) return expanded.error();
    return Ok{};
}

}  // namespace dpengine
