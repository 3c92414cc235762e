#include "openai_stream.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <utility>

namespace dpengine::engine {
namespace json = boost::json;

namespace {

constexpr std::string_view blanks = " \t";

std::string_view trim(std::string_view s) {
    size_t first = s.find_first_not_of(blanks);
    if (first == std::string_view::npos) return {};
    return s.substr(first, s.find_last_not_of(blanks) - first + 1);
}

bool equal_ignoring_case(std::string_view a, std::string_view b) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    return a.size() == b.size() &&
        std::equal(a.begin(), a.end(), b.begin(), [&](char x, char y) { return lower(x) == lower(y); });
}

std::optional<uint32_t> as_count(const json::value& v) {
    if (auto n = v.if_int64(); n && *n >= 0 && *n <= UINT32_MAX) return static_cast<uint32_t>(*n);
    if (auto n = v.if_uint64(); n && *n <= UINT32_MAX) return static_cast<uint32_t>(*n);
    return std::nullopt;
}

// Calls F(line) for each line of TEXT, whichever of LF, CRLF or CR ends it.
template <typename F>
void for_each_line(std::string_view text, F f) {
    while (!text.empty()) {
        size_t end = text.find_first_of("\r\n");
        f(text.substr(0, end));
        if (end == std::string_view::npos) return;
        size_t next = end + (text[end] == '\r' && end + 1 < text.size() && text[end + 1] == '\n' ? 2 : 1);
        text.remove_prefix(next);
    }
}

// One sample line of the Prometheus text format, "name{labels} value [timestamp]": its name
// and value, or nullopt for comments, blank and malformed lines. Label values may hold '}'
// and escaped quotes, so the labels are skipped quote by quote.
struct Sample {
    std::string_view name;
    double value = 0;
};

std::optional<Sample> parse_sample(std::string_view line) {
    line = trim(line);
    if (line.empty() || line.front() == '#') return std::nullopt;
    size_t name_end = line.find_first_of("{ \t");
    if (name_end == std::string_view::npos) return std::nullopt;
    Sample sample{line.substr(0, name_end)};
    size_t at = name_end;
    if (line[at] == '{') {
        bool quoted = false;
        for (++at; at < line.size(); ++at) {
            char c = line[at];
            if (quoted && c == '\\') ++at;
            else if (c == '"') quoted = !quoted;
            else if (!quoted && c == '}') break;
        }
        if (at >= line.size()) return std::nullopt;
        ++at;
    }
    std::string_view rest = trim(line.substr(at));
    std::string_view value = rest.substr(0, rest.find_first_of(blanks));
    if (!value.empty() && value.front() == '+') value.remove_prefix(1);  // "+Inf"; from_chars takes no sign
    auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), sample.value);
    if (ec != std::errc() || end != value.data() + value.size() || !std::isfinite(sample.value)) return std::nullopt;
    return sample;
}

constexpr std::string_view queued_metrics[] = {"vllm:num_requests_waiting", "llamacpp:requests_deferred"};
constexpr std::string_view kv_cache_metrics[] = {"vllm:gpu_cache_usage_perc", "vllm:kv_cache_usage_perc",
                                                 "llamacpp:kv_cache_usage_ratio"};

bool one_of(std::string_view name, const auto& names) {
    return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

// Most chunks of a stream carry no usage: they are not parsed at all.
bool may_have_usage(std::string_view text) { return text.find("\"completion_tokens\"") != std::string_view::npos; }

}  // namespace

bool is_event_stream(std::string_view content_type) {
    return equal_ignoring_case(trim(content_type.substr(0, content_type.find(';'))), "text/event-stream");
}

bool valid_request_path(std::string_view path) {
    return !path.empty() && path.front() == '/' &&
        std::all_of(path.begin(), path.end(), [](char c) { return c > ' ' && c < '\x7f'; });
}

bool SseSplitter::feed(std::string_view bytes, std::vector<std::string>& events) {
    // The bytes from MARK up to the current one belong to pending_ but are appended only when
    // an event ends or the input does: a run of bytes is copied at once, and an event that
    // lies whole in BYTES is copied once, into its own string.
    const char* p = bytes.data();
    const size_t n = bytes.size();
    size_t mark = 0;
    auto held = [&](size_t at) { return pending_.size() + (at - mark); };  // pending_'s size if appended up to AT
    auto emit = [&](size_t end) {
        pending_.append(p + mark, end - mark);
        mark = end;
        events.push_back(std::move(pending_));
        pending_.clear();
    };
    size_t i = 0;
    while (i < n) {
        char c = p[i];
        if (after_cr_) {
            after_cr_ = false;
            if (c == '\n') {  // CRLF: one line end, and the event's last byte if the CR ended it
                ++i;
                if (cr_ended_event_) emit(i);
                continue;
            }
            if (cr_ended_event_) emit(i);
        }
        if (c != '\r' && c != '\n') {  // the rest of the line's content, up to its end or the input's
            size_t end = i + 1;
            while (end < n && p[end] != '\r' && p[end] != '\n') ++end;
            if (held(end) > max_event_bytes_) return false;
            line_empty_ = false;
            has_content_ = true;
            i = end;
            continue;
        }
        if (held(i) >= max_event_bytes_) return false;
        ++i;
        bool ends_event = line_empty_ && has_content_;
        line_empty_ = true;
        if (ends_event) has_content_ = false;
        if (c == '\r') {
            after_cr_ = true;
            cr_ended_event_ = ends_event;
        } else if (ends_event) {
            emit(i);
        }
    }
    pending_.append(p + mark, n - mark);
    return true;
}

std::string SseSplitter::finish() {
    has_content_ = false;
    line_empty_ = true;
    after_cr_ = false;
    cr_ended_event_ = false;
    return std::exchange(pending_, {});
}

std::string sse_event_data(std::string_view event) {
    std::string data;
    bool any = false;
    for_each_line(event, [&](std::string_view line) {
        size_t colon = line.find(':');
        if (line.substr(0, colon) != "data") return;  // another field, a comment (":...") or an empty line
        std::string_view value = colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        if (any) data += '\n';
        data += value;
        any = true;
    });
    return data;
}

std::optional<uint32_t> usage_completion_tokens(std::string_view text) {
    if (!may_have_usage(text)) return std::nullopt;
    boost::system::error_code ec;
    json::value doc = json::parse(text, ec);
    if (ec || !doc.is_object()) return std::nullopt;
    const json::value* usage = doc.get_object().if_contains("usage");
    if (!usage || !usage->is_object()) return std::nullopt;
    const json::value* tokens = usage->get_object().if_contains("completion_tokens");
    return tokens ? as_count(*tokens) : std::nullopt;
}

std::optional<uint32_t> event_completion_tokens(std::string_view event) {
    if (!may_have_usage(event)) return std::nullopt;
    return usage_completion_tokens(sse_event_data(event));
}

EngineFigures parse_metrics(std::string_view text) {
    EngineFigures figures;
    std::optional<double> queued;
    for_each_line(text, [&](std::string_view line) {
        auto sample = parse_sample(line);
        if (!sample) return;
        if (one_of(sample->name, queued_metrics)) {
            queued = queued.value_or(0.0) + sample->value;
        } else if (one_of(sample->name, kv_cache_metrics)) {
            figures.kv_cache_usage =
                std::max(figures.kv_cache_usage.value_or(0.0), std::clamp(sample->value, 0.0, 1.0));
        }
    });
    if (queued) figures.queued = static_cast<uint32_t>(std::clamp(std::round(*queued), 0.0, double(UINT32_MAX)));
    return figures;
}

std::optional<SlotUse> parse_slots(std::string_view text) {
    boost::system::error_code ec;
    json::value doc = json::parse(text, ec);
    if (ec || !doc.is_array()) return std::nullopt;
    SlotUse use;
    for (const json::value& slot : doc.get_array()) {
        const json::object* s = slot.if_object();
        if (!s) return std::nullopt;
        ++use.slots;
        if (const json::value* processing = s->if_contains("is_processing"); processing && processing->is_bool()) {
            use.busy += processing->get_bool();
        } else if (const json::value* state = s->if_contains("state")) {
            use.busy += as_count(*state).value_or(0) != 0;
        }
    }
    return use;
}

}  // namespace dpengine::engine
