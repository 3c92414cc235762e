#include "config.hpp"

#include "api_keys.hpp"
#include "keys.hpp"
#include "placeholders.hpp"
#include "private_file.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <arpa/inet.h>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits.h>
#include <netdb.h>
#include <span>
#include <string_view>
#include <sys/socket.h>
#include <type_traits>
#include <unistd.h>
#include <variant>

namespace dpengine {
namespace {

namespace fs = std::filesystem;

// Every key of the file, once. The loader, the command-line flags, validate() and to_toml()
// all work from this table, so a key added here is read, checked and printed everywhere.
using StringList = std::vector<std::string>;
using StringTable = std::map<std::string, std::string>;
using Target = std::variant<std::string*, bool*, Role*, uint16_t*, uint32_t*, uint64_t*, std::optional<uint32_t>*,
                            double*, StringList*, StringTable*>;

struct Field {
    std::string_view section;
    std::string_view key;
    OnReload on_reload;  // what a reload does with a changed value (config.hpp)
    Target (*target)(Config&);
    int64_t min;  // integers: the accepted range
    int64_t max;
    bool zero_allowed;  // numbers: whether 0 is accepted (negatives never are)

    constexpr Field(std::string_view section, std::string_view key, OnReload on_reload, Target (*target)(Config&),
                    int64_t min = 0, int64_t max = 0, bool zero_allowed = false)
        : section(section),
          key(key),
          on_reload(on_reload),
          target(target),
          min(min),
          max(max),
          zero_allowed(zero_allowed) {}
};

// The reload column's values, short so that the table stays one line a key.
constexpr OnReload restart = OnReload::restart;
constexpr OnReload live = OnReload::live;
constexpr OnReload rank_start = OnReload::rank_start;

constexpr int64_t u16_max = UINT16_MAX;
constexpr int64_t u32_max = UINT32_MAX;
constexpr int64_t max_dp_size = 65536;

// clang-format off
constexpr Field fields[] = {
    {"node", "role", restart, [](Config& c) -> Target { return &c.node.role; }},
    {"node", "name", restart, [](Config& c) -> Target { return &c.node.name; }},
    {"data_parallel", "size", restart, [](Config& c) -> Target { return &c.data_parallel.size; }, 1, max_dp_size},
    {"data_parallel", "size_local", restart, [](Config& c) -> Target { return &c.data_parallel.size_local; }, 0, max_dp_size},
    {"data_parallel", "start_rank", restart, [](Config& c) -> Target { return &c.data_parallel.start_rank; }, 0, max_dp_size - 1},
    {"data_parallel", "address", restart, [](Config& c) -> Target { return &c.data_parallel.address; }},
    {"data_parallel", "rpc_port", restart, [](Config& c) -> Target { return &c.data_parallel.rpc_port; }, 0, u16_max},
    {"data_parallel", "min_ranks", restart, [](Config& c) -> Target { return &c.data_parallel.min_ranks; }, 1, max_dp_size},
    {"data_parallel", "dp_sync", restart, [](Config& c) -> Target { return &c.data_parallel.dp_sync; }},
    {"data_parallel", "group", restart, [](Config& c) -> Target { return &c.data_parallel.group; }},
    {"data_parallel", "sync_interval", restart, [](Config& c) -> Target { return &c.data_parallel.sync_interval; }, 1, 4096},
    {"data_parallel", "group_timeout", restart, [](Config& c) -> Target { return &c.data_parallel.group_timeout; }},
    {"frontend", "host", restart, [](Config& c) -> Target { return &c.frontend.host; }},
    {"frontend", "port", restart, [](Config& c) -> Target { return &c.frontend.port; }, 1, u16_max},
    {"frontend", "max_body_bytes", live, [](Config& c) -> Target { return &c.frontend.max_body_bytes; }, 1 << 10, 1 << 30},
    {"frontend", "max_connections", live, [](Config& c) -> Target { return &c.frontend.max_connections; }, 1, u32_max},
    {"frontend", "idle_timeout", live, [](Config& c) -> Target { return &c.frontend.idle_timeout; }},
    {"frontend", "request_timeout", live, [](Config& c) -> Target { return &c.frontend.request_timeout; }},
    {"frontend", "max_response_bytes", live, [](Config& c) -> Target { return &c.frontend.max_response_bytes; }, 1 << 10, int64_t{1} << 40},
    {"frontend", "max_connections_per_client", live, [](Config& c) -> Target { return &c.frontend.max_connections_per_client; }, 1, u32_max},
    {"frontend", "max_buffered_output", live, [](Config& c) -> Target { return &c.frontend.max_buffered_output; }, 64 << 10, 1 << 30},
    {"frontend", "write_timeout", live, [](Config& c) -> Target { return &c.frontend.write_timeout; }},
    {"frontend", "api_keys", live, [](Config& c) -> Target { return &c.frontend.api_keys; }},
    {"frontend", "tls_certificate", live, [](Config& c) -> Target { return &c.frontend.tls_certificate; }},
    {"frontend", "tls_key", live, [](Config& c) -> Target { return &c.frontend.tls_key; }},
    {"engine", "backend", restart, [](Config& c) -> Target { return &c.engine.backend; }},
    {"engine", "model", restart, [](Config& c) -> Target { return &c.engine.model; }},
    {"engine", "served_model_name", restart, [](Config& c) -> Target { return &c.engine.served_model_name; }},
    {"engine", "max_batch", restart, [](Config& c) -> Target { return &c.engine.max_batch; }, 1, u32_max},
    {"engine", "step_time_ms", restart, [](Config& c) -> Target { return &c.engine.step_time_ms; }, 0, 0, true},
    {"engine", "default_max_tokens", rank_start, [](Config& c) -> Target { return &c.engine.default_max_tokens; }, 1, u32_max},
    {"engine", "max_model_len", restart, [](Config& c) -> Target { return &c.engine.max_model_len; }, 1, u32_max},
    {"engine", "command", restart, [](Config& c) -> Target { return &c.engine.command; }},
    {"engine", "env", restart, [](Config& c) -> Target { return &c.engine.env; }},
    {"engine", "health_path", restart, [](Config& c) -> Target { return &c.engine.health_path; }},
    {"engine", "ready_timeout", restart, [](Config& c) -> Target { return &c.engine.ready_timeout; }},
    {"engine", "health_interval", restart, [](Config& c) -> Target { return &c.engine.health_interval; }},
    {"engine", "health_failures", restart, [](Config& c) -> Target { return &c.engine.health_failures; }, 1, 1000},
    {"engine", "passthrough_paths", restart, [](Config& c) -> Target { return &c.engine.passthrough_paths; }},
    {"engine", "max_concurrency", restart, [](Config& c) -> Target { return &c.engine.max_concurrency; }, 1, u32_max},
    {"engine", "hidden_size", restart, [](Config& c) -> Target { return &c.engine.hidden_size; }, 16, 65536},
    {"engine", "num_layers", restart, [](Config& c) -> Target { return &c.engine.num_layers; }, 1, 1024},
    {"engine", "vocab_size", restart, [](Config& c) -> Target { return &c.engine.vocab_size; }, 2, 1 << 20},
    {"engine", "gpu_memory_fraction", restart, [](Config& c) -> Target { return &c.engine.gpu_memory_fraction; }},
    {"engine", "gpus", restart, [](Config& c) -> Target { return &c.engine.gpus; }},
    {"engine", "gpu_sharing", restart, [](Config& c) -> Target { return &c.engine.gpu_sharing; }},
    {"handshake", "connect_timeout", live, [](Config& c) -> Target { return &c.handshake.connect_timeout; }},
    {"handshake", "init_timeout", live, [](Config& c) -> Target { return &c.handshake.init_timeout; }},
    {"handshake", "ready_timeout", live, [](Config& c) -> Target { return &c.handshake.ready_timeout; }},
    {"handshake", "heartbeat_interval", rank_start, [](Config& c) -> Target { return &c.handshake.heartbeat_interval; }},
    {"handshake", "heartbeat_timeout", live, [](Config& c) -> Target { return &c.handshake.heartbeat_timeout; }},
    {"handshake", "hang_timeout", live, [](Config& c) -> Target { return &c.handshake.hang_timeout; }},
    {"handshake", "refusal_rate_limit", live, [](Config& c) -> Target { return &c.handshake.refusal_rate_limit; }, 0, u32_max, true},
    {"handshake", "refusal_mute", live, [](Config& c) -> Target { return &c.handshake.refusal_mute; }},
    {"handshake", "register_timeout", live, [](Config& c) -> Target { return &c.handshake.register_timeout; }},
    {"supervision", "restart_backoff", live, [](Config& c) -> Target { return &c.supervision.restart_backoff; }},
    {"supervision", "restart_backoff_max", live, [](Config& c) -> Target { return &c.supervision.restart_backoff_max; }},
    {"supervision", "restart_budget", live, [](Config& c) -> Target { return &c.supervision.restart_budget; }, 0, u32_max, true},
    {"supervision", "restart_window", live, [](Config& c) -> Target { return &c.supervision.restart_window; }},
    {"supervision", "head_grace_period", rank_start, [](Config& c) -> Target { return &c.supervision.head_grace_period; }},
    {"security", "key", restart, [](Config& c) -> Target { return &c.security.key; }},
    {"security", "authorized_keys", live, [](Config& c) -> Target { return &c.security.authorized_keys; }},
    {"security", "head_public_key", restart, [](Config& c) -> Target { return &c.security.head_public_key; }},
    {"security", "insecure", restart, [](Config& c) -> Target { return &c.security.insecure; }},
    {"daemon", "runtime_directory", restart, [](Config& c) -> Target { return &c.daemon.runtime_directory; }},
    {"daemon", "engine_program", restart, [](Config& c) -> Target { return &c.daemon.engine_program; }},
    {"daemon", "strict", restart, [](Config& c) -> Target { return &c.daemon.strict; }},
    {"daemon", "max_message_bytes", restart, [](Config& c) -> Target { return &c.daemon.max_message_bytes; }, 1 << 10, 1 << 30},
    {"daemon", "stop_timeout", live, [](Config& c) -> Target { return &c.daemon.stop_timeout; }},
};
// clang-format on

constexpr std::string_view known_backends[] = {"synthetic", "http", "cuda"};

std::string full_name(const Field& f) { return std::string(f.section) + "." + std::string(f.key); }

const Field* find_field(std::string_view section, std::string_view key) {
    for (const Field& f : fields)
        if (f.section == section && f.key == key) return &f;
    return nullptr;
}

bool is_section(std::string_view section) {
    return std::any_of(std::begin(fields), std::end(fields), [&](const Field& f) { return f.section == section; });
}

template <class T>
constexpr bool is_integer_target = std::is_same_v<T, uint16_t> || std::is_same_v<T, uint32_t> ||
    std::is_same_v<T, uint64_t> || std::is_same_v<T, std::optional<uint32_t>>;

std::string_view role_name(Role role) { return role == Role::head ? "head" : "headless"; }

// TOML basic string, so that to_toml() output and error messages quote values the same way.
std::string toml_quote(std::string_view s) {
    std::string out = "\"";
    for (char ch : s) {
        switch (ch) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\t': out += "\\t"; break;
            case '\r': out += "\\r"; break;
            default:
                if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(ch));
                    out += buf;
                } else {
                    out += ch;
                }
        }
    }
    return out + "\"";
}

// A key of an inline table: bare when TOML allows it, else quoted.
std::string toml_key(std::string_view key) {
    bool bare = !key.empty() && std::all_of(key.begin(), key.end(), [](char ch) {
        return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-';
    });
    return bare ? std::string(key) : toml_quote(key);
}

// The shortest text that reads back as the same double, and still reads as a TOML float.
std::string format_double(double v) {
    char buf[64];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
    std::string s(buf, end);
    if (s.find_first_of(".eEn") == std::string::npos) s += ".0";  // 'n': inf and nan
    return s;
}

bool number_ok(const Field& f, double v) { return std::isfinite(v) && (f.zero_allowed ? v >= 0 : v > 0); }

// What a key accepts, worded for "expected ..." messages.
std::string expected(Config& c, const Field& f) {
    return std::visit(
        [&](auto* p) -> std::string {
            using T = std::remove_pointer_t<decltype(p)>;
            if constexpr (std::is_same_v<T, std::string>) return "a string";
            else if constexpr (std::is_same_v<T, bool>) return "true or false";
            else if constexpr (std::is_same_v<T, Role>) return "\"head\" or \"headless\"";
            else if constexpr (std::is_same_v<T, double>)
                return f.zero_allowed ? "a number from 0 up" : "a number greater than 0";
            else if constexpr (std::is_same_v<T, StringList>) return "an array of strings";
            else if constexpr (std::is_same_v<T, StringTable>) return "a table of strings";
            else return "an integer from " + std::to_string(f.min) + " to " + std::to_string(f.max);
        },
        f.target(c));
}

// The key's current value as TOML, or nothing for an unset optional.
std::optional<std::string> toml_value(Config& c, const Field& f) {
    return std::visit(
        [](auto* p) -> std::optional<std::string> {
            using T = std::remove_pointer_t<decltype(p)>;
            if constexpr (std::is_same_v<T, std::string>) return toml_quote(*p);
            else if constexpr (std::is_same_v<T, bool>) return *p ? "true" : "false";
            else if constexpr (std::is_same_v<T, Role>) return toml_quote(role_name(*p));
            else if constexpr (std::is_same_v<T, double>) return format_double(*p);
            else if constexpr (std::is_same_v<T, StringList>) {
                std::string out = "[";
                for (const auto& item : *p) out += (out.size() > 1 ? ", " : "") + toml_quote(item);
                return out + "]";
            } else if constexpr (std::is_same_v<T, StringTable>) {
                std::string out;
                for (const auto& [key, value] : *p)
                    out += (out.empty() ? "{ " : ", ") + toml_key(key) + " = " + toml_quote(value);
                return out.empty() ? "{}" : out + " }";
            } else if constexpr (std::is_same_v<T, std::optional<uint32_t>>) {
                if (!*p) return std::nullopt;
                return std::to_string(**p);
            } else {
                return std::to_string(*p);
            }
        },
        f.target(c));
}

// A value as given: from TOML (typed) or from the command line (text, converted per key).
struct Text {
    std::string_view text;
};
using Raw = std::variant<int64_t, double, bool, std::string, Text, StringList, StringTable>;

// A command-line value as a number of type T when the whole text is one.
template <class T>
std::optional<T> parse_whole(std::string_view text) {
    T v;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (ec == std::errc() && end == text.data() + text.size()) return v;
    return std::nullopt;
}

std::optional<int64_t> as_integer(const Raw& raw) {
    if (auto* i = std::get_if<int64_t>(&raw)) return *i;
    if (auto* t = std::get_if<Text>(&raw)) return parse_whole<int64_t>(t->text);
    return std::nullopt;
}

// Floats accept integers too: "connect_timeout = 30" means 30 seconds.
std::optional<double> as_number(const Raw& raw) {
    if (auto* d = std::get_if<double>(&raw)) return *d;
    if (auto* i = std::get_if<int64_t>(&raw)) return static_cast<double>(*i);
    if (auto* t = std::get_if<Text>(&raw)) return parse_whole<double>(t->text);
    return std::nullopt;
}

std::optional<std::string> as_string(const Raw& raw) {
    if (auto* s = std::get_if<std::string>(&raw)) return *s;
    if (auto* t = std::get_if<Text>(&raw)) return std::string(t->text);
    return std::nullopt;
}

// Stores RAW into the key when its type and range fit; false leaves the config unchanged.
bool assign(Config& c, const Field& f, const Raw& raw) {
    return std::visit(
        [&](auto* p) -> bool {
            using T = std::remove_pointer_t<decltype(p)>;
            if constexpr (std::is_same_v<T, std::string>) {
                auto s = as_string(raw);
                if (s) *p = std::move(*s);
                return s.has_value();
            } else if constexpr (std::is_same_v<T, bool>) {
                auto* b = std::get_if<bool>(&raw);
                if (b) *p = *b;
                return b != nullptr;
            } else if constexpr (std::is_same_v<T, Role>) {
                auto s = as_string(raw);
                if (s == "head") *p = Role::head;
                else if (s == "headless") *p = Role::headless;
                else return false;
                return true;
            } else if constexpr (std::is_same_v<T, double>) {
                auto v = as_number(raw);
                if (!v || !number_ok(f, *v)) return false;
                *p = *v;
                return true;
            } else if constexpr (std::is_same_v<T, StringList> || std::is_same_v<T, StringTable>) {
                auto* v = std::get_if<T>(&raw);
                if (v) *p = *v;
                return v != nullptr;
            } else {
                static_assert(is_integer_target<T>);
                auto v = as_integer(raw);
                if (!v || *v < f.min || *v > f.max) return false;
                using Stored = std::conditional_t<std::is_same_v<T, std::optional<uint32_t>>, uint32_t, T>;
                *p = static_cast<Stored>(*v);
                return true;
            }
        },
        f.target(c));
}

// Whether the key's current value is in its range (for configs not built by the loader).
bool in_range(Config& c, const Field& f) {
    return std::visit(
        [&](auto* p) -> bool {
            using T = std::remove_pointer_t<decltype(p)>;
            if constexpr (std::is_same_v<T, double>) return number_ok(f, *p);
            else if constexpr (std::is_same_v<T, std::optional<uint32_t>>) return !*p || (**p >= f.min && **p <= f.max);
            else if constexpr (is_integer_target<T>)
                return static_cast<int64_t>(*p) >= f.min && static_cast<int64_t>(*p) <= f.max;
            else return true;
        },
        f.target(c));
}

std::optional<Raw> raw_from_toml(const toml::node& node) {
    if (auto* v = node.as_integer()) return Raw(v->get());
    if (auto* v = node.as_floating_point()) return Raw(v->get());
    if (auto* v = node.as_boolean()) return Raw(v->get());
    if (auto* v = node.as_string()) return Raw(v->get());
    if (auto* array = node.as_array()) {
        StringList list;
        for (const toml::node& item : *array) {
            auto* text = item.as_string();
            if (!text) return std::nullopt;
            list.push_back(text->get());
        }
        return Raw(std::move(list));
    }
    if (auto* table = node.as_table()) {
        StringTable entries;
        for (auto&& [key, value] : *table) {
            auto* text = value.as_string();
            if (!text) return std::nullopt;
            entries[std::string(key.str())] = text->get();
        }
        return Raw(std::move(entries));
    }
    return std::nullopt;
}

// A TOML value as the user wrote it (near enough), or what it is when it has no short form.
std::string describe(const toml::node& node) {
    if (auto* v = node.as_integer()) return std::to_string(v->get());
    if (auto* v = node.as_floating_point()) return format_double(v->get());
    if (auto* v = node.as_boolean()) return v->get() ? "true" : "false";
    if (auto* v = node.as_string()) return toml_quote(v->get());
    switch (node.type()) {
        case toml::node_type::table: return "a table";
        case toml::node_type::array: return "an array";
        case toml::node_type::date: return "a date";
        case toml::node_type::time: return "a time";
        default: return "a date-time";
    }
}

size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= b.size(); ++j) {
            size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
            diagonal = above;
        }
    }
    return row[b.size()];
}

// "; did you mean 'x'?" for a near miss among CANDIDATES, else nothing.
std::string suggestion(std::string_view name, std::span<const std::string> candidates) {
    const std::string* best = nullptr;
    size_t best_distance = 3;  // more than two edits away is a different word, not a typo
    for (const std::string& candidate : candidates) {
        size_t d = edit_distance(name, candidate);
        if (d < best_distance) best = &candidate, best_distance = d;
    }
    return best ? "; did you mean '" + *best + "'?" : "";
}

std::vector<std::string> section_names() {
    std::vector<std::string> names;
    for (const Field& f : fields)
        if (std::find(names.begin(), names.end(), f.section) == names.end()) names.emplace_back(f.section);
    return names;
}

std::vector<std::string> key_names() {
    std::vector<std::string> names;
    for (const Field& f : fields) names.push_back(full_name(f));
    return names;
}

struct ConfigFile {
    std::string path;
    toml::table table;
};

// Reads a whole file; on failure returns nothing and leaves the reason in errno.
std::optional<std::string> read_text(const std::string& path) {
    std::FILE* file = std::fopen(path.c_str(), "re");
    if (!file) return std::nullopt;
    std::string text;
    char buf[8192];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, file)) > 0) text.append(buf, n);
    int error = std::ferror(file) ? errno : 0;
    std::fclose(file);
    if (error) {
        errno = error;
        return std::nullopt;
    }
    return text;
}

Result<toml::table> parse_toml(const std::string& path, const std::string& text) {
    // toml++ reports syntax errors by exception; they end here.
    try {
        return toml::parse(text, std::string_view(path));
    } catch (const toml::parse_error& e) {
        return Error{path + ":" + std::to_string(e.source().begin.line) + ":" +
                     std::to_string(e.source().begin.column) + ": " + std::string(e.description())};
    }
}

// The main file (when present) and then FILE.d/*.toml by name.
Status read_config_files(const std::string& path, bool path_given, std::vector<ConfigFile>& files) {
    auto add = [&](const std::string& p, const std::string& text) -> Status {
        auto table = parse_toml(p, text);
        if (!table) return table.error();
        files.push_back({p, std::move(table.value())});
        return Ok{};
    };
    auto cannot_read = [](const std::string& p) { return Error{"cannot read " + p + ": " + std::strerror(errno)}; };

    // Without a main file only the defaults and drop-ins apply, unless it was asked for.
    if (auto text = read_text(path)) {
        Status added = add(path, *text);
        if (!added) return added;
    } else if (errno != ENOENT || path_given) {
        return cannot_read(path);
    }

    const fs::path dropin_dir = path + ".d";
    std::error_code ec;
    if (!fs::is_directory(dropin_dir, ec)) return Ok{};
    std::vector<std::string> dropins;
    for (fs::directory_iterator it(dropin_dir, ec), end; !ec && it != end; it.increment(ec)) {
        std::error_code type_ec;
        if (it->path().extension() == ".toml" && it->is_regular_file(type_ec)) dropins.push_back(it->path().string());
    }
    if (ec) return Error{"cannot read " + dropin_dir.string() + ": " + ec.message()};
    std::sort(dropins.begin(), dropins.end());
    for (const std::string& p : dropins) {
        auto text = read_text(p);
        if (!text) return cannot_read(p);
        Status added = add(p, *text);
        if (!added) return added;
    }
    return Ok{};
}

Status apply_file(Config& config, const ConfigFile& file, bool strict, std::vector<std::string>& warnings) {
    auto where = [&](const toml::source_region& source) {
        return file.path + ":" + std::to_string(source.begin.line) + ": ";
    };
    auto unknown = [&](const toml::source_region& source, const std::string& what, const std::string& hint) -> Status {
        if (strict)
            return Error{where(source) + "unknown " + what + "; remove it or check its spelling (strict mode is on)" +
                         hint};
        warnings.push_back(where(source) + "unknown " + what + " (ignored)" + hint);
        return Ok{};
    };

    for (auto&& [section_key, section_node] : file.table) {
        const std::string section(section_key.str());
        if (!is_section(section)) {
            const std::string what = section_node.is_table() ? "section '[" + section + "]'" : "key '" + section + "'";
            Status s = unknown(section_key.source(), what, suggestion(section, section_names()));
            if (!s) return s;
            continue;
        }
        const toml::table* table = section_node.as_table();
        if (!table)
            return Error{where(section_key.source()) + section + ": expected a table ([" + section + "]), got " +
                         describe(section_node)};

        for (auto&& [key, node] : *table) {
            const Field* field = find_field(section, key.str());
            if (!field) {
                const std::string name = section + "." + std::string(key.str());
                Status s = unknown(key.source(), "key '" + name + "'", suggestion(name, key_names()));
                if (!s) return s;
                continue;
            }
            auto raw = raw_from_toml(node);
            if (!raw || !assign(config, *field, *raw))
                return Error{where(key.source()) + full_name(*field) + ": expected " + expected(config, *field) +
                             ", got " + describe(node)};
        }
    }
    return Ok{};
}

// RFC 1123 host name; an all-numeric last label is left to the IPv4 parser, so that
// "10.0.0.300" is refused rather than taken for a name.
bool is_host_name(std::string_view name) {
    if (!name.empty() && name.back() == '.') name.remove_suffix(1);
    if (name.empty() || name.size() > 253) return false;
    std::string_view last;
    while (true) {
        size_t dot = name.find('.');
        std::string_view label = name.substr(0, dot);
        if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
        for (char ch : label)
            if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-') return false;
        last = label;
        if (dot == std::string_view::npos) break;
        name.remove_prefix(dot + 1);
    }
    return !std::all_of(last.begin(), last.end(), [](char ch) { return std::isdigit(static_cast<unsigned char>(ch)); });
}

bool parses_as(int family, const std::string& text) {
    unsigned char buf[sizeof(in6_addr)];
    return inet_pton(family, text.c_str(), buf) == 1;
}

// The address without IPv6 brackets, or nothing when it is no address or host name.
std::optional<std::string> normalize_address(const std::string& address) {
    if (address.size() >= 2 && address.front() == '[' && address.back() == ']') {
        std::string inner = address.substr(1, address.size() - 2);
        if (parses_as(AF_INET6, inner)) return inner;
        return std::nullopt;
    }
    if (parses_as(AF_INET, address) || parses_as(AF_INET6, address) || is_host_name(address)) return address;
    return std::nullopt;
}

// The errno of binding a TCP socket to ADDRESS:PORT the way the transport will, or 0. An
// address that does not resolve counts as 0: the transport's own bind reports that.
int probe_bind(const std::string& address, uint16_t port) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    addrinfo* found = nullptr;
    if (getaddrinfo(address.c_str(), std::to_string(port).c_str(), &hints, &found) != 0) return 0;
    int error = 0;
    int fd = socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, found->ai_addr, found->ai_addrlen) != 0) error = errno;
        close(fd);
    }
    freeaddrinfo(found);
    return error;
}

std::string host_name() {
    char buf[HOST_NAME_MAX + 1] = {};
    if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
    return buf;
}

enum class Action { help, version, bus_introspect, config, check_config, strict, headless, set };

struct Flag {
    std::string_view short_name;
    std::string_view long_name;
    std::string_view metavar;  // non-empty: the flag takes a value
    std::string_view key;      // Action::set: the config key it sets
    Action action;
    std::string_view help;
};

constexpr Flag flags[] = {
    {"-h", "--help", "", "", Action::help, "Show this help and exit"},
    {"", "--version", "", "", Action::version, "Show the version and exit"},
    {"", "--bus-introspect", "", "", Action::bus_introspect, "Print the D-Bus interface description (XML) and exit"},
    {"", "--config", "FILE", "", Action::config, "Read FILE and FILE.d/*.toml instead of the default"},
    {"", "--check-config", "", "", Action::check_config, "Check the configuration, print it and exit"},
    {"", "--strict", "", "", Action::strict, "Make unknown config keys errors (daemon.strict)"},
    {"-dp", "--data-parallel-size", "N", "data_parallel.size", Action::set, "Ranks in the whole data-parallel group"},
    {"-dpl", "--data-parallel-size-local", "N", "data_parallel.size_local", Action::set, "Ranks this node runs"},
    {"-dpr", "--data-parallel-start-rank", "N", "data_parallel.start_rank", Action::set,
     "Global rank of this node's first rank"},
    {"", "--data-parallel-address", "ADDR", "data_parallel.address", Action::set,
     "The head's address: IPv4, IPv6 or host name"},
    {"", "--data-parallel-rpc-port", "PORT", "data_parallel.rpc_port", Action::set,
     "The head's port for ranks on other nodes"},
    {"", "--headless", "", "", Action::headless, "Run ranks only, for a head elsewhere (node.role)"},
    {"", "--host", "ADDR", "frontend.host", Action::set, "Address the HTTP API listens on"},
    {"", "--port", "PORT", "frontend.port", Action::set, "Port the HTTP API listens on"},
    {"", "--node-name", "NAME", "node.name", Action::set, "This node's name (default: host name)"},
    {"", "--backend", "NAME", "engine.backend", Action::set, "Engine backend (synthetic)"},
    {"", "--model", "NAME", "engine.model", Action::set, "Model to serve, as the MODEL argument does"},
    {"", "--step-time-ms", "MS", "engine.step_time_ms", Action::set, "Time one synthetic engine step takes"},
    {"", "--runtime-directory", "DIR", "daemon.runtime_directory", Action::set, "Directory for runtime sockets"},
};

const Flag* find_flag(std::string_view name) {
    for (const Flag& f : flags)
        if (f.long_name == name || (!f.short_name.empty() && f.short_name == name)) return &f;
    return nullptr;
}

struct FlagUse {
    const Flag* flag;
    std::string name;  // as written, for messages
    std::string value;
};

}  // namespace

Status load_config_files(Config& config, const std::string& path, bool path_given, bool strict,
                         std::vector<std::string>& warnings) {
    std::vector<ConfigFile> files;
    Status read = read_config_files(path, path_given, files);
    if (!read) return read;

    // Strictness is decided before any file is applied, so that a drop-in setting
    // daemon.strict also covers the main file; the last file that sets it wins.
    bool strict_files = config.daemon.strict;
    for (const ConfigFile& file : files)
        if (auto* b = file.table["daemon"]["strict"].as_boolean()) strict_files = b->get();

    for (const ConfigFile& file : files) {
        Status s = apply_file(config, file, strict || strict_files, warnings);
        if (!s) return s;
    }
    return Ok{};
}

Status load_config_text(Config& config, const std::string& name, const std::string& text, bool strict,
                        std::vector<std::string>& warnings) {
    auto table = parse_toml(name, text);
    if (!table) return table.error();
    const ConfigFile file{name, std::move(table.value())};
    bool strict_file = strict || config.daemon.strict;
    if (auto* b = file.table["daemon"]["strict"].as_boolean()) strict_file = strict || b->get();
    return apply_file(config, file, strict_file, warnings);
}

Result<Config> parse_command_line(int argc, const char* const* argv, CommandLine& cmdline) {
    std::vector<FlagUse> uses;
    std::vector<std::string> positionals;
    bool strict = false;
    bool options_ended = false;

    for (int i = 1; i < argc; ++i) {
        const std::string_view arg = argv[i];
        if (options_ended || arg.size() < 2 || arg[0] != '-') {
            positionals.emplace_back(arg);
            continue;
        }
        if (arg == "--") {
            options_ended = true;
            continue;
        }
        const size_t eq = arg.find('=');
        const std::string name(arg.substr(0, eq));
        const Flag* flag = find_flag(name);
        if (!flag) return Error{"unknown option '" + name + "'; see 'dpengined --help'", "usage"};

        std::string value;
        if (!flag->metavar.empty()) {
            if (eq != std::string_view::npos) value = arg.substr(eq + 1);
            else if (i + 1 < argc) value = argv[++i];
            else
                return Error{
                    "option '" + name + "' needs a value, as in '" + name + " " + std::string(flag->metavar) + "'",
                    "usage"};
        } else if (eq != std::string_view::npos) {
            return Error{"option '" + name + "' takes no value; write it as '" + name + "'", "usage"};
        }

        switch (flag->action) {
            case Action::help: cmdline.help = true; return Config{};
            case Action::version: cmdline.version = true; return Config{};
            case Action::bus_introspect: cmdline.bus_introspect = true; return Config{};
            case Action::config:
                cmdline.config_path = value;
                cmdline.config_path_given = true;
                break;
            case Action::check_config: cmdline.check_config = true; break;
            case Action::strict: strict = true; break;
            case Action::headless:
            case Action::set: uses.push_back({flag, name, value}); break;
        }
    }

    if (positionals.size() > 1)
        return Error{
            "only one argument, the model, is accepted; got '" + positionals[0] + "' and '" + positionals[1] + "'",
            "usage"};
    if (!positionals.empty()) {
        for (const FlagUse& use : uses)
            if (use.flag->key == "engine.model")
                return Error{"the model is given twice, as the argument '" + positionals[0] + "' and with --model '" +
                                 use.value + "'; give it once",
                             "usage"};
        uses.push_back({find_flag("--model"), "--model", positionals[0]});
    }

    Config config;
    Status loaded = load_config_files(config, cmdline.config_path, cmdline.config_path_given, strict, cmdline.warnings);
    if (!loaded) return loaded.error();
    if (strict) config.daemon.strict = true;

    for (const FlagUse& use : uses) {
        if (use.flag->action == Action::headless) {
            config.node.role = Role::headless;
            continue;
        }
        const std::string_view key = use.flag->key;
        const size_t dot = key.find('.');
        const Field& field = *find_field(key.substr(0, dot), key.substr(dot + 1));
        if (!assign(config, field, Text{use.value}))
            return Error{"option '" + use.name + "': expected " + expected(config, field) + ", got '" + use.value + "'",
                         "usage"};
    }

    Status valid = validate(config, !cmdline.reload);
    if (!valid) return valid.error();
    return config;
}

// Ranks on other nodes mean TCP, and TCP means CURVE unless the operator opted out: the keys
// must exist, be private, and parse, before anything starts.
Status validate_keys(const Config& config) {
    const auto& sec = config.security;
    if (sec.insecure) return Ok{};
    const std::string why =
        " (ranks on other nodes connect over TCP, which is encrypted and authenticated with "
        "CURVE keys; or set security.insecure = true on an isolated test network)";
    if (sec.key.empty()) return Error{"security.key is not set" + why};
    if (auto secret = keys::load_secret(sec.key); !secret) return Error{"security.key: " + secret.error().message};
    if (config.node.role == Role::headless) {
        if (!keys::is_z85_key(sec.head_public_key))
            return Error{
                "security.head_public_key must be the head's public key (40 Z85 characters, the first word "
                "of the head's KEY.pub file), got '" +
                sec.head_public_key + "'" + why};
    } else if (auto authorized = keys::load_authorized_keys(sec.authorized_keys, config.node.name); !authorized) {
        return Error{"security.authorized_keys: " + authorized.error().message};
    }
    return Ok{};
}

// The front door's files (head only): read now, so a missing or exposed file stops the start
// (and --check-config) with its fix. The certificate's content is for OpenSSL to judge, when
// the front-end loads it.
Status validate_frontend_files(const Config& config) {
    const auto& fe = config.frontend;
    if (fe.tls_certificate.empty() != fe.tls_key.empty())
        return Error{
            "frontend.tls_certificate and frontend.tls_key go together: set both (PEM files) to serve "
            "HTTPS, or neither to serve plain HTTP"};
    if (!fe.tls_key.empty()) {
        if (auto key = read_private_file(fe.tls_key, "frontend.tls_key"); !key) return key.error();
        if (::access(fe.tls_certificate.c_str(), R_OK) != 0)
            return Error{"cannot read frontend.tls_certificate " + fe.tls_certificate + ": " + std::strerror(errno)};
    }
    if (!fe.api_keys.empty()) {
        if (auto keys = api_keys::load(fe.api_keys); !keys) return keys.error();
    }
    return Ok{};
}

static Status validate_dp_group(const Config& config);
static Status validate_gpu_settings(const Config& config);

// The http backend's server: a command to run, placeholders it can expand, a port it is told.
Status validate_http_backend(const Config& config) {
    const auto& engine = config.engine;
    const std::string example =
        "e.g. command = [\"vllm\", \"serve\", \"{model}\", \"--host\", \"127.0.0.1\", \"--port\", \"{port}\"]";
    if (engine.command.empty() || engine.command.front().empty())
        return Error{
            "engine.command is empty; the http backend needs the command line of the "
            "OpenAI-compatible server each rank starts, " +
            example};
    // The port only reaches the server through a placeholder: one must expand differently
    // for two different ports.
    bool port_used = false;
    auto uses_port = [](std::string_view text) {
        PlaceholderValues a, b;
        a.port = 1, b.port = 2;
        auto x = expand_placeholders(text, a), y = expand_placeholders(text, b);
        return x && y && *x != *y;
    };
    for (size_t i = 0; i < engine.command.size(); ++i) {
        if (auto ok = check_placeholders(engine.command[i]); !ok)
            return Error{"engine.command[" + std::to_string(i) + "]: " + ok.error().message};
        port_used = port_used || uses_port(engine.command[i]);
    }
    for (const auto& [name, value] : engine.env) {
        if (name.empty() || name.find('=') != std::string::npos || name.find('\0') != std::string::npos)
            return Error{"engine.env: '" + name + "' is not an environment variable name"};
        if (auto ok = check_placeholders(value); !ok) return Error{"engine.env." + name + ": " + ok.error().message};
        port_used = port_used || uses_port(value);
    }
    if (!port_used)
        return Error{
            "engine.command does not use {port}: the server must listen on the loopback port "
            "the rank picks for it, " +
            example};
    if (engine.health_path.empty() || engine.health_path.front() != '/')
        return Error{"engine.health_path must be a path starting with '/', such as \"/health\"; got '" +
                     engine.health_path + "'"};
    // The rank relays a server's body or event in pieces of up to 15 MiB (http_backend.cpp).
    if (config.daemon.max_message_bytes < (16u << 20))
        return Error{"daemon.max_message_bytes (" + std::to_string(config.daemon.max_message_bytes) +
                     ") must be at least 16777216 with the http backend, which relays a server's answers "
                     "in pieces of up to 15 MiB; raise it"};
    if (engine.ready_timeout >= config.handshake.init_timeout)
        return Error{"engine.ready_timeout (" + format_double(engine.ready_timeout) +
                     ") must be shorter than handshake.init_timeout (" + format_double(config.handshake.init_timeout) +
                     "), so that a server that never becomes healthy is reported by its rank; "
                     "lower one or raise the other"};
    return Ok{};
}

// The head answers these paths itself, or routes them as OpenAI endpoints already.
constexpr std::string_view head_paths[] = {
    "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions", "/v1/embeddings"};

Status validate_passthrough_paths(const EngineSection& engine) {
    for (const auto& path : engine.passthrough_paths) {
        if (path.size() < 2 || path.front() != '/' || path.find_first_of("?# \t\r\n") != std::string::npos)
            return Error{"engine.passthrough_paths: '" + path +
                         "' is not a request path; give paths such as \"/tokenize\" or \"/v1/responses\""};
        for (std::string_view own : head_paths)
            if (path == own)
                return Error{"engine.passthrough_paths: '" + path +
                             "' is served by the head already; remove it from the list"};
    }
    return Ok{};
}

Status validate(Config& config, bool probe_ports) {
    for (const Field& f : fields)
        if (!in_range(config, f))
            return Error{full_name(f) + ": expected " + expected(config, f) + ", got " +
                         toml_value(config, f).value_or("nothing")};

    auto& dp = config.data_parallel;
    const bool headless = config.node.role == Role::headless;
    if (!dp.size && !headless) dp.size = 1;
    if (!dp.start_rank && !headless) dp.start_rank = 0;
    // Unset on a headless node: the head assigns the block; the checks below use 0.
    const uint32_t start_rank = dp.start_rank.value_or(0);
    if (!dp.size_local) {
        if (headless)
            return Error{
                "a headless node needs data_parallel.size_local "
                "(--data-parallel-size-local): the number of ranks it runs"};
        dp.size_local = *dp.size - start_rank;
    }
    if (dp.size) {
        if (start_rank >= *dp.size)
            return Error{"data_parallel.start_rank (" + std::to_string(start_rank) +
                         ") must be less than data_parallel.size (" + std::to_string(*dp.size) +
                         "); ranks are numbered from 0"};
        if (*dp.size_local > *dp.size - start_rank)
            return Error{"data_parallel.size_local (" + std::to_string(*dp.size_local) +
                         ") is larger than data_parallel.size (" + std::to_string(*dp.size) + ") minus start_rank (" +
                         std::to_string(start_rank) + "); lower size_local or raise size"};
    } else if (uint64_t{start_rank} + *dp.size_local > max_dp_size) {
        return Error{"data_parallel.start_rank (" + std::to_string(start_rank) + ") plus size_local (" +
                     std::to_string(*dp.size_local) + ") is beyond the largest DP size, " +
                     std::to_string(max_dp_size)};
    }
    if (headless && *dp.size_local == 0)
        return Error{
            "data_parallel.size_local is 0, so this headless node has no ranks to run; "
            "set it to 1 or more"};

    const std::pair<const char*, std::string*> addresses[] = {{"data_parallel.address", &dp.address},
                                                              {"frontend.host", &config.frontend.host}};
    for (auto [key, address] : addresses) {
        auto normalized = normalize_address(*address);
        if (!normalized)
            return Error{std::string(key) + ": '" + *address + "' is not an IPv4/IPv6 address or host name"};
        *address = std::move(*normalized);
    }

    auto& engine = config.engine;
    if (std::find(std::begin(known_backends), std::end(known_backends), engine.backend) == std::end(known_backends)) {
        std::string known;
        for (std::string_view b : known_backends) known += (known.empty() ? "" : ", ") + std::string(b);
        return Error{"engine.backend: unknown backend '" + engine.backend + "'; known backends: " + known};
    }
    if (engine.model.empty())
        return Error{
            "engine.model is empty; name the model to serve "
            "(--model or the MODEL argument)"};
    if (engine.default_max_tokens > engine.max_model_len)
        return Error{"engine.default_max_tokens (" + std::to_string(engine.default_max_tokens) +
                     ") is larger than engine.max_model_len (" + std::to_string(engine.max_model_len) +
                     "); lower one or raise the other"};

    if (engine.backend == "http") {
        if (auto http_ok = validate_http_backend(config); !http_ok) return http_ok;
    }
    if (auto paths_ok = validate_passthrough_paths(engine); !paths_ok) return paths_ok;

    if (config.node.name.empty()) config.node.name = host_name();

    if (config.has_remote_ranks()) {
        if (dp.rpc_port == 0)
            return Error{
                "data_parallel.rpc_port must not be 0 when ranks run on other nodes; "
                "set a fixed port they can connect to"};
        if (!headless && probe_ports && probe_bind(dp.address, dp.rpc_port) == EADDRINUSE)
            return Error{"data_parallel.rpc_port " + std::to_string(dp.rpc_port) + " on " + dp.address +
                         " is already in use; stop the other process or choose another port"};
        if (auto keys_ok = validate_keys(config); !keys_ok) return keys_ok;
    }
    if (config.handshake.hang_timeout <= config.handshake.heartbeat_interval)
        return Error{"handshake.hang_timeout (" + format_double(config.handshake.hang_timeout) +
                     ") must be longer than handshake.heartbeat_interval (" +
                     format_double(config.handshake.heartbeat_interval) + ")"};
    if (!headless && dp.size && dp.min_ranks > *dp.size)
        return Error{"data_parallel.min_ranks (" + std::to_string(dp.min_ranks) +
                     ") is larger than data_parallel.size (" + std::to_string(*dp.size) +
                     "); the head could never serve; lower min_ranks"};
    if (config.handshake.heartbeat_timeout <= config.handshake.heartbeat_interval)
        return Error{"handshake.heartbeat_timeout (" + format_double(config.handshake.heartbeat_timeout) +
                     ") must be longer than handshake.heartbeat_interval (" +
                     format_double(config.handshake.heartbeat_interval) + ")"};
    if (auto group_ok = validate_dp_group(config); !group_ok) return group_ok;
    if (auto gpu_ok = validate_gpu_settings(config); !gpu_ok) return gpu_ok;
    if (!headless) {
        if (auto files_ok = validate_frontend_files(config); !files_ok) return files_ok;
    }
    return Ok{};
}

// The cuda backend's GPU settings. Whether the node has the GPUs is for the rank to find out
// (it may run elsewhere); what can be wrong in the file is caught here.
static Status validate_gpu_settings(const Config& config) {
    const auto& engine = config.engine;
    if (engine.gpu_memory_fraction > 1)
        return Error{
            "engine.gpu_memory_fraction must be greater than 0 and at most 1 (a share of each GPU's "
            "memory), got " +
            format_double(engine.gpu_memory_fraction)};
    std::vector<std::string> seen;
    for (const std::string& gpu : engine.gpus) {
        uint32_t index = 0;
        auto [end, ec] = std::from_chars(gpu.data(), gpu.data() + gpu.size(), index);
        if (gpu.empty() || ec != std::errc() || end != gpu.data() + gpu.size() || index > 1023)
            return Error{"engine.gpus: '" + gpu +
                         "' is not a CUDA device number; list device numbers as "
                         "strings, one per local rank, such as [\"0\", \"1\"]"};
        if (std::find(seen.begin(), seen.end(), gpu) != seen.end() && !engine.gpu_sharing)
            return Error{"engine.gpus lists device " + gpu +
                         " twice: ranks would share it; set "
                         "engine.gpu_sharing = true to allow that"};
        seen.push_back(gpu);
    }
    if (config.data_parallel.group == "nccl" && engine.backend != "cuda")
        return Error{
            "data_parallel.group = \"nccl\" needs engine.backend = \"cuda\" (NCCL runs between "
            "GPUs); use \"gloo\" or \"auto\" with the '" +
            engine.backend + "' backend"};
    if (config.data_parallel.group == "nccl" && engine.gpu_sharing)
        return Error{
            "data_parallel.group = \"nccl\" cannot run with engine.gpu_sharing = true: NCCL needs a "
            "GPU per rank; use data_parallel.group = \"gloo\" (or \"auto\") to share GPUs"};
    return Ok{};
}

// The DP group settings. A rank blocked in a collective sends no heartbeat, so the group's
// timeout must end before the head would declare the rank lost.
static Status validate_dp_group(const Config& config) {
    const auto& dp = config.data_parallel;
    if (dp.dp_sync != "independent" && dp.dp_sync != "lockstep")
        return Error{"data_parallel.dp_sync: unknown mode '" + dp.dp_sync + "'; use \"independent\" or \"lockstep\""};
    if (dp.group != "auto" && dp.group != "gloo" && dp.group != "nccl")
        return Error{"data_parallel.group: unknown group '" + dp.group + "'; use \"auto\", \"gloo\" or \"nccl\""};
    if (dp.dp_sync == "lockstep" && config.engine.backend == "http")
        return Error{
            "data_parallel.dp_sync = \"lockstep\" needs a backend that steps inside the rank, such as "
            "\"synthetic\"; the http backend's servers are independent engines: use \"independent\""};
    return Ok{};
}

std::string dp_group_kind(const Config& config) {
    const auto& group = config.data_parallel.group;
    if (group != "auto") return group;
    return config.engine.backend == "cuda" && !config.engine.gpu_sharing ? "nccl" : "gloo";
}

std::string to_toml(const Config& config) {
    Config copy = config;  // the field table hands out mutable pointers
    std::string out = "# effective configuration\n";
    std::string_view section;
    for (const Field& f : fields) {
        if (f.section != section) {
            section = f.section;
            out += "\n[" + std::string(section) + "]\n";
        }
        auto value = toml_value(copy, f);
        if (value) out += std::string(f.key) + " = " + *value + "\n";
        else out += "# " + std::string(f.key) + " is unset\n";
    }
    return out;
}

std::vector<ConfigKey> config_keys() {
    std::vector<ConfigKey> out;
    for (const Field& f : fields) out.push_back({full_name(f), f.on_reload});
    return out;
}

std::vector<ConfigKey> apply_reload(Config& running, const Config& next) {
    Config source = next;  // the field table hands out mutable pointers
    std::vector<ConfigKey> changed;
    for (const Field& f : fields) {
        bool differs = std::visit(
            [&](auto* to) {
                auto* from = std::get<decltype(to)>(f.target(source));
                if (*to == *from) return false;
                if (f.on_reload != OnReload::restart) *to = *from;
                return true;
            },
            f.target(running));
        if (differs) changed.push_back({full_name(f), f.on_reload});
    }
    return changed;
}

std::string usage_text() {
    std::string out =
        "dpengined [OPTIONS...] [MODEL]\n"
        "\n"
        "Runs a dpengine node: supervises this machine's data-parallel engine ranks and, on\n"
        "the head node, serves the OpenAI-compatible HTTP API. Settings come from\n"
        "/etc/dpengine/dpengined.toml (or --config FILE), then its drop-ins in\n"
        "FILE.d/*.toml by name, then these options; later ones win.\n"
        "\n";
    constexpr size_t help_column = 38;
    for (const Flag& f : flags) {
        std::string line = f.short_name.empty() ? "     " : "  " + std::string(f.short_name) + " ";
        line += f.long_name;
        if (!f.metavar.empty()) line += "=" + std::string(f.metavar);
        line.resize(std::max(line.size() + 2, help_column), ' ');
        out += line + std::string(f.help) + "\n";
    }
    out += "\nSee dpengined(8) and dpengined.toml(5) for details.\n";
    return out;
}

}  // namespace dpengine
