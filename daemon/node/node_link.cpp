#include "node/node_link.hpp"

#include "core/keys.hpp"
#include "core/log.hpp"
#include "core/reason.hpp"
#include "core/transport.hpp"

#include <boost/asio/post.hpp>

#include <ctime>
#include <random>
#include <utility>

namespace dpengine {

namespace asio = boost::asio;

namespace {

std::chrono::steady_clock::duration seconds(double s) {
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

uint64_t unix_now() { return static_cast<uint64_t>(std::time(nullptr)); }

// After a refusal the node asks again at this pace (a conflict may be resolved meanwhile).
constexpr double refused_retry_s = 5.0;

}  // namespace

NodeLink::NodeLink(asio::io_context& io, const Config& config, Hooks hooks)
    : io_(io),
      config_(config),
      hooks_(std::move(hooks)),
      context_(1),
      socket_(context_, zmq::socket_type::dealer),
      watcher_(io),
      timer_(io) {
    std::random_device rd;
    incarnation_ = (uint64_t{rd()} << 32) ^ rd();
    since_ = unix_now();
}

NodeLink::~NodeLink() { close(); }

void NodeLink::close() {
    timer_.cancel();
    if (watcher_.is_open()) {
        watcher_.cancel();
        watcher_.release();  // the fd belongs to the ZeroMQ socket
    }
}

Status NodeLink::connect(const std::string& endpoint) {
    try {
        transport::configure(socket_, config_.daemon.max_message_bytes);
        // A status queued for a head that is not there is stale by the time one answers.
        socket_.set(zmq::sockopt::immediate, 1);
        socket_.set(zmq::sockopt::reconnect_ivl, 500);
        socket_.set(zmq::sockopt::reconnect_ivl_max, 2000);
        if (config_.uses_curve()) {
            auto pair = keys::load_secret(config_.security.key);
            if (!pair) return Error{"security.key: " + pair.error().message};
            socket_.set(zmq::sockopt::curve_serverkey, config_.security.head_public_key);
            socket_.set(zmq::sockopt::curve_publickey, pair->public_z85);
            socket_.set(zmq::sockopt::curve_secretkey, pair->secret_z85);
        }
        socket_.connect(endpoint);
    } catch (const zmq::error_t& e) {
        return Error{"cannot open the node link to the head at " + endpoint + ": " + e.what()};
    }
    endpoint_ = endpoint;
    watcher_.assign(socket_.get(zmq::sockopt::fd));
    arm();
    tick();
    return Ok{};
}

void NodeLink::arm() {
    if (armed_ || !watcher_.is_open()) return;
    armed_ = true;
    watcher_.async_wait(asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
        armed_ = false;
        if (!ec) drain();
    });
}

// ZeroMQ's fd is edge-triggered: read until ZMQ_EVENTS says nothing is left.
void NodeLink::drain() {
    for (int i = 0; i < 256; ++i) {
        if (!(socket_.get(zmq::sockopt::events) & ZMQ_POLLIN)) break;
        zmq::message_t payload;
        if (!socket_.recv(payload, zmq::recv_flags::dontwait)) break;
        on_message(payload);
    }
    if (socket_.get(zmq::sockopt::events) & ZMQ_POLLIN) {
        asio::post(io_, [this] { drain(); });
        return;
    }
    arm();
}

void NodeLink::send(const wire::Message& message) {
    std::string bytes = wire::encode(message, epoch_);
    try {
        (void)socket_.send(zmq::buffer(bytes), zmq::send_flags::dontwait);  // no head: dropped, sent again later
    } catch (const zmq::error_t&) {
    }
    asio::post(io_, [this] { drain(); });
}

void NodeLink::set_connected(bool connected) {
    if (connected_ == connected) return;
    connected_ = connected;
    since_ = unix_now();
    if (connected) log::info("node link: connected to the head at {}", endpoint_);
    else
        log::warning("node link: lost the head at {} (nothing heard for {} s)", endpoint_,
                     config_.handshake.heartbeat_timeout);
    if (hooks_.changed) hooks_.changed();
}

std::string NodeLink::rank_state(uint32_t rank) const {
    const auto& c = last_config_;
    if (!connected_ || rank < c.start_rank || rank - c.start_rank >= c.states.size()) return "";
    return c.states[rank - c.start_rank];
}

std::optional<wire::NodeRankActivity> NodeLink::rank_activity(uint32_t rank) const {
    const auto& c = last_config_;
    if (!connected_ || rank < c.start_rank || rank - c.start_rank >= c.activity.size()) return std::nullopt;
    return c.activity[rank - c.start_rank];
}

void NodeLink::on_message(zmq::message_t& payload) {
    auto env = wire::decode(payload.to_string_view());
    if (!env) {
        log::warning("node link: the head sent a message this node cannot read: {} ({})", env.error().message,
                     env.error().code);
        return;
    }
    last_heard_ = Clock::now();
    if (auto* block = std::get_if<wire::NodeConfig>(&env->message)) {
        bool first = !registered_;
        registered_ = true;
        last_refusal_.clear();
        head_name_ = block->head;
        last_config_ = *block;
        set_connected(true);
        bool moved = !block_ || block_->first != block->start_rank || block_->second != block->count;
        epoch_ = block->epoch;
        if (first || moved) {
            block_ = std::make_pair(block->start_rank, block->count);
            if (first) log::info("node link: registered with the head '{}'; epoch {}", head_name_, block->epoch);
            if (hooks_.assigned) hooks_.assigned(*block);
        }
    } else if (auto* assign = std::get_if<wire::Assign>(&env->message)) {
        epoch_ = assign->epoch;
        block_ = std::make_pair(assign->start_rank, assign->count);
        log::notice("node link: the head assigns ranks {} to this node (epoch {})",
                    describe_block(assign->start_rank, assign->count), assign->epoch);
        if (hooks_.assigned) {
            wire::NodeConfig block{0, assign->start_rank, assign->count, assign->epoch, head_name_};
            hooks_.assigned(block);
        }
    } else if (auto* refused = std::get_if<wire::Refused>(&env->message)) {
        registered_ = false;
        if (refused->code == ReasonCode("not-registered").str()) {
            log::notice("node link: the head does not know this node (it restarted?); registering again");
            last_hello_ = {};
            asio::post(io_, [this] { tick(); });
            return;
        }
        // Logged once per distinct reason; asked again at a slow pace.
        if (refused->message != last_refusal_) {
            log::error("node link: the head refused this node: {} ({})", refused->message, refused->code);
            last_refusal_ = refused->message;
        }
    } else if (auto* error = std::get_if<wire::ErrorReply>(&env->message)) {
        log::warning("node link: the head reports: {} ({})", error->message, error->code);
    }
}

void NodeLink::report_soon() {
    if (report_pending_ || leaving_) return;
    report_pending_ = true;
    asio::post(io_, [this] {
        report_pending_ = false;
        if (registered_ && !leaving_) send(hooks_.status ? hooks_.status() : wire::NodeStatus{});
    });
}

void NodeLink::leave() {
    if (std::exchange(leaving_, true)) return;
    timer_.cancel();
    if (!registered_) return;  // the head does not count on this node: nothing to say
    wire::NodeStatus goodbye = hooks_.status ? hooks_.status() : wire::NodeStatus{};
    goodbye.leaving = true;
    send(goodbye);
    log::info("node link: told the head '{}' that this node stops", head_name_);
}

void NodeLink::tick() {
    if (leaving_) return;
    const auto now = Clock::now();
    if (connected_ && now - last_heard_ > seconds(config_.handshake.heartbeat_timeout)) {
        set_connected(false);
        registered_ = false;  // a head that comes back may not know this node
    }
    if (registered_) {
        send(hooks_.status ? hooks_.status() : wire::NodeStatus{});
    } else if (last_hello_ == Clock::time_point{} ||
               now - last_hello_ >= seconds(last_refusal_.empty() ? 1.0 : refused_retry_s)) {
        wire::NodeHello hello;
        hello.node = config_.node.name;
        hello.incarnation = incarnation_;
        hello.build = DPENGINE_VERSION;
        hello.count = config_.size_local();
        hello.start_rank = config_.data_parallel.start_rank;
        if (block_ && block_->second) {
            hello.held_start = block_->first;
            hello.held_count = block_->second;
        }
        hello.dp_size = config_.dp_size();  // the model is the head's to say (CONFIG)
        send(hello);
        last_hello_ = now;
    }
    timer_.expires_after(seconds(config_.handshake.heartbeat_interval));
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) tick();
    });
}

NodeInfo NodeLink::head() const {
    NodeInfo info;
    info.name = head_name_;
    info.role = "head";
    info.state = connected_ ? "connected" : "disconnected";
    info.address = endpoint_;
    info.since = since_;
    return info;
}

}  // namespace dpengine
