#include "head/metrics.hpp"

#include <fmt/format.h>

namespace dpengine {
namespace {

// Label values escape backslash, quote and newline (the text format's rules).
std::string label_value(const std::string& v) {
    std::string out;
    for (char c : v) {
        if (c == '\\' || c == '"') out += '\\';
        if (c == '\n') {
            out += "\\n";
            continue;
        }
        out += c;
    }
    return out;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
    fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

}  // namespace

void LatencyHistogram::observe(double seconds) {
    for (size_t i = 0; i < bounds.size(); ++i) {
        if (seconds <= bounds[i]) {
            ++counts_[i];
            break;
        }
    }
    ++count_;
    sum_ += seconds;
}

void LatencyHistogram::render(std::string& out, const std::string& name, const std::string& labels) const {
    const std::string sep = labels.empty() ? "" : ",";
    uint64_t cumulative = 0;
    for (size_t i = 0; i < bounds.size(); ++i) {
        cumulative += counts_[i];
        fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, bounds[i],
                       cumulative);
    }
    fmt::format_to(std::back_inserter(out), "{}_bucket{{{}{}le=\"+Inf\"}} {}\n", name, labels, sep, count_);
    fmt::format_to(std::back_inserter(out), "{}_sum{{{}}} {}\n{}_count{{{}}} {}\n", name, labels, sum_, name, labels,
                   count_);
}

std::string render_metrics(const std::vector<RankInfo>& ranks, const std::map<std::string, uint64_t>& refusals,
                           const FrontendMetrics& frontend) {
    std::string out;
    auto per_rank = [&](const char* name, const char* type, const char* help, auto value) {
        header(out, name, type, help);
        for (const auto& r : ranks) {
            fmt::format_to(std::back_inserter(out), "{}{{rank=\"{}\",node=\"{}\"}} {}\n", name, r.rank,
                           label_value(r.node), value(r));
        }
    };
    per_rank("dpengine_rank_requests_total", "counter", "Requests the rank finished.",
             [](const RankInfo& r) { return r.served; });
    per_rank("dpengine_rank_tokens_total", "counter", "Tokens the rank generated.",
             [](const RankInfo& r) { return r.tokens; });
    per_rank("dpengine_rank_in_flight", "gauge", "Requests the head has sent to the rank and not seen finish.",
             [](const RankInfo& r) { return r.in_flight; });
    per_rank("dpengine_rank_queue_depth", "gauge", "Requests waiting in the rank's queue, as it last reported.",
             [](const RankInfo& r) { return r.waiting; });
    per_rank("dpengine_rank_engine_queued", "gauge",
             "Requests queued inside the rank's engine, where the engine reports it (http backend: its server's "
             "/metrics or /slots).",
             [](const RankInfo& r) { return r.engine_queued; });
    per_rank("dpengine_rank_kv_cache_usage", "gauge",
             "The share of the rank's engine KV cache in use, 0 to 1, where the engine reports it.",
             [](const RankInfo& r) { return r.kv_cache_usage; });
    per_rank("dpengine_rank_health_failures", "gauge",
             "Health probes of the rank's engine server failed in a row (http backend); above 0 the rank gets no new "
             "requests.",
             [](const RankInfo& r) { return r.health_failures; });
    per_rank("dpengine_rank_restarts_total", "counter", "Times the rank's process was started again.",
             [](const RankInfo& r) { return r.restarts; });
    header(out, "dpengine_rank_events_total", "counter",
           "Losses, restarts and recoveries of the rank, by reason code (dpengined(8), FAULT HANDLING).");
    for (const auto& r : ranks) {
        for (const auto& [reason, count] : r.events) {
            fmt::format_to(std::back_inserter(out),
                           "dpengine_rank_events_total{{rank=\"{}\",node=\"{}\",reason=\"{}\"}} {}\n", r.rank,
                           label_value(r.node), label_value(reason), count);
        }
    }
    per_rank("dpengine_rank_group_epoch", "gauge",
             "The epoch of the rank's DP group (lockstep mode), as it last reported.",
             [](const RankInfo& r) { return r.group_epoch; });
    per_rank("dpengine_rank_wave", "gauge", "The lockstep wave the rank runs, or the next one while paused.",
             [](const RankInfo& r) { return r.wave; });
    per_rank("dpengine_rank_lockstep_steps_total", "counter", "Lockstep steps the rank took on real work.",
             [](const RankInfo& r) { return r.lockstep_steps; });
    per_rank("dpengine_rank_dummy_steps_total", "counter",
             "Lockstep steps the rank took on a dummy batch (no work of its own).",
             [](const RankInfo& r) { return r.dummy_steps; });
    per_rank("dpengine_rank_steps_per_second", "gauge",
             "Engine steps per second (real and dummy), over the last few seconds of heartbeats.",
             [](const RankInfo& r) { return r.steps_per_second; });
    per_rank("dpengine_rank_dummy_step_share", "gauge",
             "The share of dummy steps (lockstep mode) among the rank's steps, 0 to 1, over the same window.",
             [](const RankInfo& r) { return r.dummy_step_share; });
    per_rank("dpengine_rank_memory_used_bytes", "gauge",
             "Device memory the rank's engine holds, as it last reported; 0: not measured (CPU backends).",
             [](const RankInfo& r) { return r.memory_used; });
    header(out, "dpengine_rank_group", "gauge", "1 for the rank's DP group kind and state (lockstep mode).");
    for (const auto& r : ranks) {
        if (r.group_kind.empty()) continue;
        fmt::format_to(std::back_inserter(out),
                       "dpengine_rank_group{{rank=\"{}\",node=\"{}\",kind=\"{}\",state=\"{}\"}} 1\n", r.rank,
                       label_value(r.node), label_value(r.group_kind), label_value(r.group_state));
    }
    header(out, "dpengine_rank_state", "gauge", "1 for the rank's current lifecycle state.");
    for (const auto& r : ranks) {
        fmt::format_to(std::back_inserter(out), "dpengine_rank_state{{rank=\"{}\",node=\"{}\",state=\"{}\"}} 1\n",
                       r.rank, label_value(r.node), to_string(r.state));
    }
    header(out, "dpengine_handshake_refusals_total", "counter", "Handshakes and connections refused, by reason code.");
    for (const auto& [reason, count] : refusals) {
        fmt::format_to(std::back_inserter(out), "dpengine_handshake_refusals_total{{reason=\"{}\"}} {}\n",
                       label_value(reason), count);
    }
    header(out, "dpengine_http_responses_total", "counter", "HTTP responses by status code.");
    for (const auto& [status, count] : frontend.responses_by_status) {
        fmt::format_to(std::back_inserter(out), "dpengine_http_responses_total{{code=\"{}\"}} {}\n", status, count);
    }
    header(out, "dpengine_http_connections", "gauge", "HTTP client connections open.");
    fmt::format_to(std::back_inserter(out), "dpengine_http_connections {}\n", frontend.open_connections);
    header(out, "dpengine_http_connections_closed_total", "counter",
           "HTTP connections the front-end closed to protect itself, by reason (dpengined.toml(5), [frontend]).");
    for (const auto& [reason, count] : frontend.connections_closed) {
        fmt::format_to(std::back_inserter(out), "dpengine_http_connections_closed_total{{reason=\"{}\"}} {}\n",
                       label_value(reason), count);
    }
    header(out, "dpengine_request_duration_seconds", "histogram",
           "Completion requests, from arrival to the last byte.");
    for (const auto& [endpoint, h] : frontend.request_seconds)
        h.render(out, "dpengine_request_duration_seconds", endpoint);
    header(out, "dpengine_time_to_first_token_seconds", "histogram",
           "Completion requests, from arrival to the first token.");
    for (const auto& [endpoint, h] : frontend.first_token_seconds)
        h.render(out, "dpengine_time_to_first_token_seconds", endpoint);
    return out;
}

}  // namespace dpengine
