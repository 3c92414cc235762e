// What the http backend reads from the engine's server (engine/openai_stream.hpp): a
// text/event-stream body cut into events, however the reads split it, and the /metrics and
// /slots figures. The splitter must give every byte back, in order, and the same events
// whether the body comes whole or in pieces.
#include "engine/openai_stream.hpp"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

using namespace dpengine::engine;

namespace {

// The events of BODY fed in pieces of the sizes SPLITS gives (cycled), then the rest.
std::vector<std::string> split_feed(std::string_view body, std::string_view splits) {
    SseSplitter splitter(1 << 20);
    std::vector<std::string> events;
    size_t at = 0;
    for (size_t i = 0; at < body.size(); ++i) {
        size_t n = splits.empty() ? body.size() : 1 + static_cast<unsigned char>(splits[i % splits.size()]) % 64;
        n = std::min(n, body.size() - at);
        if (!splitter.feed(body.substr(at, n), events)) return {};
        at += n;
    }
    if (std::string rest = splitter.finish(); !rest.empty()) events.push_back(std::move(rest));
    return events;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view input(reinterpret_cast<const char*>(data), size);
    // The first 8 bytes choose the read sizes; the rest is the body.
    std::string_view splits = input.substr(0, std::min<size_t>(8, input.size()));
    std::string_view body = input.substr(splits.size());

    std::vector<std::string> whole = split_feed(body, {});
    std::string joined;
    for (const auto& e : whole) joined += e;
    if (joined != body) std::abort();                     // a byte lost, added or moved
    if (split_feed(body, splits) != whole) std::abort();  // the reads' split changed the events
    for (const auto& e : whole) (void)sse_event_data(e), (void)event_completion_tokens(e);

    EngineFigures figures = parse_metrics(body);
    if (figures.kv_cache_usage && !std::isfinite(*figures.kv_cache_usage)) std::abort();
    if (auto slots = parse_slots(body); slots && slots->busy > slots->slots) std::abort();
    (void)usage_completion_tokens(body);
    return 0;
}
