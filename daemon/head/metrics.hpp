// The head's GET /metrics in the Prometheus text format (version 0.0.4): per-rank series
// labelled {rank, node}, handshake refusals by reason, and front-end latency histograms.
#pragma once

#include "head/rank_link.hpp"

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dpengine {

class LatencyHistogram {
public:
    static constexpr std::array<double, 12> bounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                      0.1,   0.25,   0.5,   1.0,  2.5,   10.0};
    void observe(double seconds);
    // Appends the histogram's lines for metric `name` with the given label set ("" or a="b").
    void render(std::string& out, const std::string& name, const std::string& labels) const;

private:
    std::array<uint64_t, bounds.size()> counts_{};  // per bucket, not cumulative
    uint64_t count_ = 0;
    double sum_ = 0;
};

struct FrontendMetrics {
    // By endpoint ("completions", "chat_completions") and whether the request streamed.
    std::map<std::string, LatencyHistogram> request_seconds;
    std::map<std::string, LatencyHistogram> first_token_seconds;
    std::map<int, uint64_t> responses_by_status;
    // Connections the front-end closed to protect itself, by reason: "connection-limit",
    // "client-limit" (frontend.max_connections_per_client), "slow-client" (did not read).
    std::map<std::string, uint64_t> connections_closed;
    uint64_t open_connections = 0;  // as of the render
};

std::string render_metrics(const std::vector<RankInfo>& ranks, const std::map<std::string, uint64_t>& refusals,
                           const FrontendMetrics& frontend);

}  // namespace dpengine
