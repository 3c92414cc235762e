// A message of every wire type with every field set to a value other than its default (and
// one that decoding accepts), built from the field lists of daemon/core/wire_fields.hpp. The
// compatibility tests and the fuzz seeds start from these, so a new field is in both at once.
#pragma once

#include "core/wire_fields.hpp"

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace dpengine::wire::filled {

template <class S>
void fill_struct(S& s);

// `n` is the field's position, so that fields of one type get different values.
template <class T>
void fill(T& v, std::string_view key, uint32_t n) {
    if constexpr (std::is_same_v<T, bool>) v = true;
    else if constexpr (std::is_same_v<T, uint32_t>) v = 100 + n;  // an HTTP status; a rank block within bounds
    else if constexpr (std::is_same_v<T, uint64_t>) v = (uint64_t{1} << 40) + n;
    else if constexpr (std::is_same_v<T, double>) v = 0.25 + n / 64.0;              // within 0..1 (kv_cache_usage)
    else if constexpr (std::is_same_v<T, std::string>) v = "/" + std::string(key);  // REQUEST's path starts with '/'
    else if constexpr (std::is_same_v<T, std::vector<std::pair<std::string, std::string>>>) {
        v = {{std::string(key), std::string(key)}};
    } else if constexpr (requires { v.emplace_back(); }) fill(v.emplace_back(), key, n);
    else if constexpr (requires { v.emplace(); }) fill(v.emplace(), key, n);
    else fill_struct(v);
}

template <class S>
void fill_struct(S& s) {
    uint32_t n = 0;
    std::apply([&](const auto&... f) { (fill(s.*f.member, f.key, n++), ...); }, fields::Schema<S>::fields);
}

template <size_t... I>
std::vector<Message> every_type(std::index_sequence<I...>) {
    std::vector<Message> out;
    (fill_struct(std::get<I>(out.emplace_back(std::in_place_index<I>))), ...);
    return out;
}

// One message of each type, in the type table's order.
inline std::vector<Message> every_type() {
    return every_type(std::make_index_sequence<std::variant_size_v<Message>>{});
}

}  // namespace dpengine::wire::filled
