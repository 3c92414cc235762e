// A headless node's check for its head after a rank gave up on it (exit_code::unreachable):
// TCP connects to the head's rpc_port with a back-off until one succeeds, then calls back
// once. Logs once per change of state, not once per try.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace dpengine {

class HeadProbe {
public:
    HeadProbe(boost::asio::io_context& io, std::string host, uint16_t port);

    // Starts probing unless it already does; `on_answer` runs once, when a connect succeeds.
    void wait(std::function<void()> on_answer);
    void cancel();
    bool waiting() const { return static_cast<bool>(on_answer_); }

private:
    void attempt();
    void retry_later(const std::string& reason);

    boost::asio::io_context& io_;
    std::string host_;
    uint16_t port_;
    boost::asio::steady_timer timer_;
    std::unique_ptr<boost::asio::ip::tcp::socket> socket_;
    std::function<void()> on_answer_;
    std::chrono::milliseconds backoff_{};
    std::string last_reason_;
    uint64_t generation_ = 0;  // bumps on cancel so late completions of an old try do nothing
};

}  // namespace dpengine
