// The front-end's HTTP/1.1 server: event-driven on the daemon's loop (Boost.Beast parses
// requests; responses and SSE streams are written directly), one small object per
// connection, so thousands of concurrent streams cost memory, not threads.
#pragma once

#include "core/config.hpp"
#include "core/error.hpp"
#include "head/openai.hpp"
#include "head/rank_link.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <unordered_set>

namespace dpengine {

class HttpSession;

class HttpServer {
public:
    HttpServer(boost::asio::io_context& io, const Config& config, RankLink& ranks);
    ~HttpServer();

    Status listen();
    // Stops accepting and closes idle keep-alive connections; exchanges in progress go on.
    void stop_accepting();
    size_t connections() const { return sessions_.size(); }

private:
    friend class HttpSession;
    void accept();

    boost::asio::io_context& io_;
    const Config& config_;
    RankLink& ranks_;
    openai::Limits limits_;
    boost::asio::ip::tcp::acceptor acceptor_;
    std::unordered_set<HttpSession*> sessions_;
    bool accepting_ = false;
};

}  // namespace dpengine
