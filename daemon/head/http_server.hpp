// The front-end's HTTP/1.1 server: event-driven on the daemon's loop (Boost.Beast parses
// requests; responses and SSE streams are written directly), one small object per
// connection, so thousands of concurrent streams cost memory, not threads.
#pragma once

#include "core/config.hpp"
#include "core/error.hpp"
#include "head/metrics.hpp"
#include "core/api_error.hpp"
#include "head/request_body.hpp"
#include "head/rank_link.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <functional>
#include <unordered_set>

namespace dpengine {

class HttpSession;

class HttpServer {
public:
    // `rank_view` gives the ranks as the node sees them (with pids and restarts) for /metrics.
    HttpServer(boost::asio::io_context& io, const Config& config, RankLink& ranks,
               std::function<std::vector<RankInfo>()> rank_view);
    ~HttpServer();

    Status listen();
    // Stops accepting and closes idle keep-alive connections; exchanges in progress go on.
    void stop_accepting();
    size_t connections() const { return sessions_.size(); }
    // The configuration was reloaded: pick up the limits that changed.
    void config_changed();

private:
    friend class HttpSession;
    void accept();
    // The POST paths whose requests go to an engine: the OpenAI endpoints, and
    // engine.passthrough_paths.
    bool routes_engine(std::string_view path) const;

    boost::asio::io_context& io_;
    const Config& config_;
    RankLink& ranks_;
    std::function<std::vector<RankInfo>()> rank_view_;
    head::ModelNames model_names_;
    FrontendMetrics metrics_;
    boost::asio::ip::tcp::acceptor acceptor_;
    std::unordered_set<HttpSession*> sessions_;
    bool accepting_ = false;
};

}  // namespace dpengine
