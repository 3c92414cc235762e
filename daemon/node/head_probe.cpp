#include "node/head_probe.hpp"

#include "core/log.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/address.hpp>

namespace dpengine {

namespace asio = boost::asio;
using asio::ip::tcp;

namespace {
constexpr std::chrono::milliseconds first_backoff{250};
constexpr std::chrono::milliseconds max_backoff{5000};
// A partitioned head drops the SYN: without this a try would wait for the kernel's timeout.
constexpr std::chrono::milliseconds connect_timeout{1000};
}  // namespace

HeadProbe::HeadProbe(asio::io_context& io, std::string host, uint16_t port)
    : io_(io), host_(std::move(host)), port_(port), timer_(io) {}

void HeadProbe::wait(std::function<void()> on_answer) {
    if (on_answer_) return;
    on_answer_ = std::move(on_answer);
    backoff_ = first_backoff;
    last_reason_.clear();
    log::notice("waiting for the head at {} port {} to answer before starting ranks again", host_, port_);
    attempt();
}

void HeadProbe::cancel() {
    ++generation_;
    on_answer_ = nullptr;
    timer_.cancel();
    if (socket_) {
        boost::system::error_code ignored;
        socket_->close(ignored);
    }
}

void HeadProbe::attempt() {
    boost::system::error_code ec;
    auto address = asio::ip::make_address(host_, ec);
    if (ec) {
        // validate() normalizes host names it can resolve; anything else is named here.
        tcp::resolver resolver(io_);
        auto results = resolver.resolve(host_, std::to_string(port_), ec);
        if (ec || results.empty()) return retry_later("cannot resolve " + host_ + ": " + ec.message());
        address = results.begin()->endpoint().address();
    }
    socket_ = std::make_unique<tcp::socket>(io_);
    uint64_t generation = ++generation_;
    socket_->async_connect(tcp::endpoint(address, port_), [this, generation](const boost::system::error_code& ec) {
        if (generation != generation_) return;
        timer_.cancel();
        boost::system::error_code ignored;
        socket_->close(ignored);
        if (ec) return retry_later(ec == asio::error::operation_aborted ? "no answer (timed out)" : ec.message());
        log::notice("the head at {} port {} answers again [head-back]", host_, port_);
        auto done = std::move(on_answer_);
        on_answer_ = nullptr;
        if (done) done();
    });
    timer_.expires_after(connect_timeout);
    timer_.async_wait([this, generation](const boost::system::error_code& ec) {
        if (ec || generation != generation_) return;
        boost::system::error_code ignored;
        socket_->close(ignored);  // completes the connect with operation_aborted
    });
}

void HeadProbe::retry_later(const std::string& reason) {
    if (!on_answer_) return;
    if (reason != last_reason_) {
        log::notice("the head at {} port {} does not answer: {}; trying again with back-off up to {} s", host_, port_,
                    reason, max_backoff.count() / 1000);
        last_reason_ = reason;
    }
    uint64_t generation = ++generation_;
    timer_.expires_after(backoff_);
    backoff_ = std::min(backoff_ * 2, max_backoff);
    timer_.async_wait([this, generation](const boost::system::error_code& ec) {
        if (!ec && generation == generation_) attempt();
    });
}

}  // namespace dpengine
