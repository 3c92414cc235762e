// The front-end's HTTP/1.1 server: event-driven on the daemon's loop (Boost.Beast parses
// requests; responses and SSE streams are written directly), one small object per
// connection, so thousands of concurrent streams cost memory, not threads.
//
// The front door (frontend.api_keys, frontend.tls_certificate/tls_key) and the limits that
// keep one client from taking the head's memory, descriptors or connection slots are here too:
// a connection per client address cap, a cap on output waiting for a client that does not
// read (and a write deadline), and accepts that pause with back-off when descriptors run out.
#pragma once

#include "core/api_error.hpp"
#include "core/api_keys.hpp"
#include "core/config.hpp"
#include "core/error.hpp"
#include "core/log_throttle.hpp"
#include "head/metrics.hpp"
#include "head/rank_link.hpp"
#include "head/request_body.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <unordered_set>

namespace dpengine {

class HttpConnection;
template <class Stream>
class HttpSession;

class HttpServer {
public:
    // `rank_view` gives the ranks as the node sees them (with pids and restarts) for /metrics.
    HttpServer(boost::asio::io_context& io, const Config& config, RankLink& ranks,
               std::function<std::vector<RankInfo>()> rank_view);
    ~HttpServer();

    // Loads the API keys and TLS files, then listens; an error names the file or address and
    // the fix.
    Status listen();
    // Stops accepting and closes idle keep-alive connections; exchanges in progress go on.
    void stop_accepting();
    size_t connections() const { return sessions_.size(); }
    // The configuration was reloaded: pick up the limits, the API keys and the certificate
    // (for new connections). When the key file or certificate does not load, nothing changes
    // and the error says why.
    Status config_changed();

private:
    template <class Stream>
    friend class HttpSession;
    void accept();
    void admit(boost::asio::ip::tcp::socket socket);
    // Out of descriptors (EMFILE and the like): try again after a pause that doubles up to 1 s.
    void pause_accepting(const boost::system::error_code& ec);
    // The POST paths whose requests go to an engine: the OpenAI endpoints, and
    // engine.passthrough_paths.
    bool routes_engine(std::string_view path) const;
    // frontend.max_connections, within what the open-file limit leaves for clients.
    uint32_t connection_limit();
    // A connection from `client` ended.
    void release(const boost::asio::ip::address& client);

    boost::asio::io_context& io_;
    const Config& config_;
    RankLink& ranks_;
    std::function<std::vector<RankInfo>()> rank_view_;
    head::ModelNames model_names_;
    FrontendMetrics metrics_;
    boost::asio::ip::tcp::acceptor acceptor_;
    boost::asio::steady_timer accept_pause_;
    std::chrono::milliseconds accept_backoff_{0};
    std::unordered_set<HttpConnection*> sessions_;
    std::unordered_map<boost::asio::ip::address, uint32_t> per_client_;
    bool accepting_ = false;
    uint32_t max_connections_ = 0;                    // connection_limit() as last computed
    std::optional<api_keys::KeySet> api_keys_;        // set: clients need a key
    std::shared_ptr<boost::asio::ssl::context> tls_;  // set: HTTPS
    // One log line per 10 s for each thing outsiders can make happen at will.
    LogThrottle log_throttle_;  // connections closed or refused, by reason
};

}  // namespace dpengine
