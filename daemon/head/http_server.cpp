#include "http_server.hpp"

#include "core/log.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json/array.hpp>
#include <boost/json/serialize.hpp>

#include <chrono>
#include <memory>
#include <optional>

namespace dpengine {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr size_t header_limit = 16 * 1024;
// Bytes a client may send ahead (pipelining) while its current request is served.
constexpr size_t read_ahead_limit = 64 * 1024;

const char* reason_phrase(int status) {
    switch (status) {
        case 200: return "OK";
        case 400: return "Bad Request";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 413: return "Payload Too Large";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        default: return "Error";
    }
}

std::string json_string_array(const std::vector<std::string>& items) {
    boost::json::array out;
    for (const auto& item : items) out.emplace_back(item);
    return boost::json::serialize(out);
}

// How a failure inside the server reaches the client: its code picks the status.
openai::HttpError server_error(const Error& error) {
    openai::HttpError e;
    e.message = error.message;
    e.code = error.code;
    e.type = "server_error";
    if (error.code == "rank-lost") e.status = 502;
    else if (error.code == "timeout") e.status = 504;
    else e.status = 503;
    return e;
}

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void append_hex(std::string& out, size_t n) {
    char buf[20];
    int len = std::snprintf(buf, sizeof buf, "%zx", n);
    out.append(buf, len);
}

}  // namespace

// One client connection. While an exchange runs, the session keeps itself alive (`self_`),
// because the rank link holds a plain pointer to it as the request sink.
class HttpSession : public std::enable_shared_from_this<HttpSession>, public RequestSink {
public:
    HttpSession(HttpServer& server, tcp::socket socket)
        : server_(server), socket_(std::move(socket)), timer_(server.io_) {
        server_.sessions_.insert(this);
    }

    ~HttpSession() override { server_.sessions_.erase(this); }

    void start() { read_request(); }

    // Server shutdown: idle connections close now; one in an exchange closes when it ends.
    void close_if_idle() {
        keep_alive_ = false;
        if (!request_ && !writing_) close();
    }

    void on_output(uint32_t choice, const wire::Output& out) override {
        Choice& c = choices_[choice];
        if (!first_token_seen_ && out.new_tokens > 0) {
            first_token_seen_ = true;
            server_.metrics_.first_token_seconds[metric_key_].observe(seconds_since(started_at_));
        }
        prompt_tokens_ = out.prompt_tokens;
        c.tokens += out.new_tokens;
        bool finished = !out.finish.empty();
        if (request_->stream) {
            if (!out.text.empty() || finished) {
                append_chunk(openai::stream_chunk(*request_, id_, created_, choice, out.text,
                                                  finished ? std::string_view(out.finish) : std::string_view(), !c.started));
                c.started = true;
            }
        } else {
            c.text += out.text;
        }
        if (finished) {
            c.finish = out.finish;
            c.engine_id = 0;
            if (--remaining_ == 0) finish_exchange();
        }
        flush_soon();
    }

    void on_failure(uint32_t choice, const Error& error) override {
        choices_[choice].engine_id = 0;
        --remaining_;
        fail_exchange(server_error(error));
    }

private:
    struct Choice {
        uint64_t engine_id = 0;  // while the rank works on it
        std::string text;
        std::string finish;
        uint64_t tokens = 0;
        bool started = false;
    };

    void read_request() {
        parser_.emplace();
        parser_->header_limit(header_limit);
        parser_->body_limit(server_.config_.frontend.max_body_bytes);
        arm_timer(server_.config_.frontend.idle_timeout, [](HttpSession& s) { s.close(); });
        http::async_read(socket_, buffer_, *parser_,
                         [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
    }

    void on_read(beast::error_code ec) {
        timer_.cancel();
        if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::operation_aborted ||
            ec == asio::error::connection_reset || !socket_.is_open()) {
            return close();
        }
        keep_alive_ = false;  // after a parse error the stream position is unknown
        if (ec == http::error::body_limit) {
            return respond_error({413, "invalid_request_error",
                                  "request body is larger than " + std::to_string(server_.config_.frontend.max_body_bytes) +
                                      " bytes (frontend.max_body_bytes)", "", "body-too-large"});
        }
        if (ec == http::error::header_limit) {
            return respond_error({431, "invalid_request_error", "request headers are larger than 16 KiB", "", "headers-too-large"});
        }
        if (ec) {
            return respond_error({400, "invalid_request_error", "malformed HTTP request: " + ec.message(), "", "bad-http"});
        }
        auto& req = parser_->get();
        keep_alive_ = req.keep_alive();
        chunked_ = req.version() >= 11;
        route(req);
    }

    void route(http::request<http::string_body>& req) {
        std::string_view target = req.target();
        target = target.substr(0, target.find('?'));
        bool get = req.method() == http::verb::get, post = req.method() == http::verb::post;
        if (target == "/health") {
            if (!get) return method_not_allowed("GET");
            uint32_t ready = server_.ranks_.ready_count();
            bool serving = ready > 0 && server_.ranks_.has_quorum();
            std::string body = "{\"status\":\"" + std::string(serving ? "ok" : "unavailable") + "\",\"ready_ranks\":" +
                               std::to_string(ready) + ",\"ranks\":" + std::to_string(server_.ranks_.size());
            // Which ranks are missing, and where, so an operator sees what a partial start waits for.
            if (ready < server_.ranks_.size()) body += ",\"missing\":" + json_string_array(server_.ranks_.missing_ranks());
            body += "}";
            return respond(serving ? 200 : 503, "application/json", body);
        }
        if (target == "/metrics") {
            if (!get) return method_not_allowed("GET");
            return respond(200, "text/plain; version=0.0.4",
                           render_metrics(server_.rank_view_(), server_.ranks_.refusals(), server_.metrics_));
        }
        if (target == "/v1/models") {
            if (!get) return method_not_allowed("GET");
            return respond(200, "application/json", openai::models_response(server_.config_.engine.model, unix_now()));
        }
        if (target == "/v1/completions" || target == "/v1/chat/completions") {
            if (!post) return method_not_allowed("POST");
            auto endpoint = target == "/v1/completions" ? openai::Endpoint::completions : openai::Endpoint::chat_completions;
            return start_exchange(endpoint, req.body());
        }
        respond_error({404, "not_found_error", "no such endpoint: " + std::string(target), "", "not-found"});
    }

    void method_not_allowed(const char* allowed) {
        respond_error({405, "invalid_request_error", std::string("this endpoint only accepts ") + allowed, "", "method-not-allowed"});
    }

    void start_exchange(openai::Endpoint endpoint, const std::string& body) {
        auto parsed = openai::parse_request(endpoint, body, server_.limits_);
        if (auto* error = std::get_if<openai::HttpError>(&parsed)) return respond_error(*error);
        request_ = std::move(std::get<openai::CompletionRequest>(parsed));
        self_ = shared_from_this();
        started_at_ = std::chrono::steady_clock::now();
        first_token_seen_ = false;
        metric_key_ = std::string(endpoint == openai::Endpoint::completions ? "endpoint=\"completions\"" : "endpoint=\"chat_completions\"") +
                      (request_->stream ? ",stream=\"true\"" : ",stream=\"false\"");
        id_ = (endpoint == openai::Endpoint::completions ? "cmpl-" : "chatcmpl-") + std::to_string(next_exchange_id++);
        created_ = unix_now();
        prompt_tokens_ = 0;
        choices_.assign(request_->n, Choice{});
        remaining_ = request_->n;
        for (uint32_t i = 0; i < request_->n; ++i) {
            wire::Add add;
            add.prompt = request_->prompt;
            add.max_tokens = request_->sampling.max_tokens;
            add.temperature = request_->sampling.temperature;
            add.top_p = request_->sampling.top_p;
            // Each choice is its own sample: without distinct seeds a deterministic engine would
            // return n copies of one answer.
            add.seed = request_->sampling.seed.value_or(0) + i;
            add.stop = request_->sampling.stop;
            auto id = server_.ranks_.submit(std::move(add), this, i);
            if (!id) {
                remaining_ = 0;
                abort_choices();
                return end_exchange_with_status(server_error(id.error()));
            }
            choices_[i].engine_id = *id;
        }
        if (request_->stream) {
            ++server_.metrics_.responses_by_status[200];
            out_ += "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n";
            out_ += chunked_ ? "Transfer-Encoding: chunked\r\n" : "";
            if (!chunked_) keep_alive_ = false;  // HTTP/1.0: the end of the stream is the close
            out_ += keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
            flush();
        }
        arm_timer(server_.config_.frontend.request_timeout, [](HttpSession& s) {
            s.abort_choices();
            s.fail_exchange(server_error(Error{"the request did not finish within frontend.request_timeout", "timeout"}));
        });
        watch_peer();
    }

    void abort_choices() {
        for (auto& c : choices_) {
            if (c.engine_id) server_.ranks_.abort(c.engine_id);
            c.engine_id = 0;
        }
        remaining_ = 0;
    }

    void fail_exchange(const openai::HttpError& error) {
        if (!request_) return;
        abort_choices();
        if (request_->stream) {
            append_chunk(openai::stream_error_event(error));
            append_chunk(std::string(openai::stream_done));
            end_stream();
        } else {
            end_exchange_with_status(error);
        }
    }

    void finish_exchange() {
        timer_.cancel();
        server_.metrics_.request_seconds[metric_key_].observe(seconds_since(started_at_));
        openai::Usage usage{prompt_tokens_, 0};
        for (const auto& c : choices_) usage.completion_tokens += c.tokens;
        if (request_->stream) {
            if (request_->include_usage) append_chunk(openai::stream_usage_chunk(*request_, id_, created_, usage));
            append_chunk(std::string(openai::stream_done));
            end_stream();
            return;
        }
        std::vector<openai::Choice> result;
        result.reserve(choices_.size());
        for (auto& c : choices_) result.push_back({std::move(c.text), c.finish});
        std::string body = openai::completion_response(*request_, id_, created_, result, usage);
        request_.reset();
        respond(200, "application/json", body);
    }

    static double seconds_since(std::chrono::steady_clock::time_point t) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    }

    void end_stream() {
        timer_.cancel();
        if (chunked_) out_ += "0\r\n\r\n";
        request_.reset();
        response_complete_ = true;
        flush();
    }

    void end_exchange_with_status(const openai::HttpError& error) {
        timer_.cancel();
        request_.reset();
        respond_error(error);
    }

    void append_chunk(const std::string& data) {
        if (chunked_) {
            append_hex(out_, data.size());
            out_ += "\r\n";
            out_ += data;
            out_ += "\r\n";
        } else {
            out_ += data;
        }
    }

    void respond_error(const openai::HttpError& error) { respond(error.status, "application/json", openai::error_body(error)); }

    void respond(int status, const char* content_type, const std::string& body) {
        ++server_.metrics_.responses_by_status[status];
        out_ += "HTTP/1.1 ";
        out_ += std::to_string(status);
        out_ += ' ';
        out_ += reason_phrase(status);
        out_ += "\r\nContent-Type: ";
        out_ += content_type;
        out_ += "\r\nContent-Length: ";
        out_ += std::to_string(body.size());
        out_ += keep_alive_ ? "\r\nConnection: keep-alive\r\n\r\n" : "\r\nConnection: close\r\n\r\n";
        out_ += body;
        response_complete_ = true;
        flush();
    }

    // Outputs arrive in bursts (one rank message carries a step for many requests, and many
    // messages are handled per wake-up): write once after the burst, not once per token.
    void flush_soon() {
        if (flush_posted_) return;
        flush_posted_ = true;
        asio::post(server_.io_, [self = shared_from_this()] {
            self->flush_posted_ = false;
            self->flush();
        });
    }

    void flush() {
        if (writing_ || out_.empty() || !socket_.is_open()) return;
        writing_ = true;
        std::swap(out_, in_write_);
        asio::async_write(socket_, asio::buffer(in_write_),
                          [self = shared_from_this()](beast::error_code ec, size_t) { self->on_write(ec); });
    }

    void on_write(beast::error_code ec) {
        writing_ = false;
        in_write_.clear();
        if (ec) return peer_gone();
        if (!out_.empty()) return flush();
        if (!response_complete_) return;
        response_complete_ = false;
        self_.reset();
        if (!keep_alive_) return close();
        if (!watching_) return read_request();
        if (buffer_.size() > 0) {
            // The next request is already here (pipelined): stop watching and parse it.
            resume_after_cancel_ = true;
            beast::error_code ignored;
            socket_.cancel(ignored);
            return;
        }
        next_request_after_watch_ = true;
        arm_timer(server_.config_.frontend.idle_timeout, [](HttpSession& s) { s.close(); });
    }

    // While a request is served nothing else reads the socket, so a client that disconnects
    // would go unnoticed; this read notices it (and keeps any pipelined bytes for later).
    void watch_peer() {
        if (watching_ || buffer_.size() >= read_ahead_limit) return;
        watching_ = true;
        socket_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
            self->watching_ = false;
            // After the exchange ended the session waits for this read to parse what comes next;
            // the read may end either way: cancelled (bytes were already buffered) or with data.
            bool cancelled_to_resume = std::exchange(self->resume_after_cancel_, false);
            bool waiting_for_next = std::exchange(self->next_request_after_watch_, false);
            bool resume = cancelled_to_resume || waiting_for_next;
            if (ec && !(ec == asio::error::operation_aborted && resume)) return self->peer_gone();
            if (!ec) self->buffer_.commit(n);
            if (self->request_) return self->watch_peer();
            if (resume) {
                self->timer_.cancel();
                self->read_request();
            }
        });
    }

    void peer_gone() {
        if (request_) {
            abort_choices();
            request_.reset();
        }
        self_.reset();
        close();
    }

    template <class F>
    void arm_timer(double seconds, F on_expiry) {
        timer_.expires_after(std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds)));
        timer_.async_wait([self = shared_from_this(), on_expiry](beast::error_code ec) {
            if (!ec) on_expiry(*self);
        });
    }

    void close() {
        timer_.cancel();
        beast::error_code ignored;
        if (socket_.is_open()) {
            socket_.shutdown(tcp::socket::shutdown_both, ignored);
            socket_.close(ignored);
        }
        self_.reset();
    }

    static inline uint64_t next_exchange_id = 1;

    HttpServer& server_;
    tcp::socket socket_;
    asio::steady_timer timer_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    std::shared_ptr<HttpSession> self_;
    bool keep_alive_ = true;
    bool chunked_ = true;
    bool writing_ = false;
    bool flush_posted_ = false;
    bool watching_ = false;
    bool response_complete_ = false;
    bool next_request_after_watch_ = false;
    bool resume_after_cancel_ = false;
    std::string out_, in_write_;

    std::optional<openai::CompletionRequest> request_;
    std::vector<Choice> choices_;
    uint32_t remaining_ = 0;
    uint64_t prompt_tokens_ = 0;
    std::string id_;
    int64_t created_ = 0;
    std::chrono::steady_clock::time_point started_at_{};
    bool first_token_seen_ = false;
    std::string metric_key_;  // the latency histograms' labels for this exchange
};

HttpServer::HttpServer(asio::io_context& io, const Config& config, RankLink& ranks,
                       std::function<std::vector<RankInfo>()> rank_view)
    : io_(io), config_(config), ranks_(ranks), rank_view_(std::move(rank_view)), acceptor_(io) {
    config_changed();
}

void HttpServer::config_changed() {
    limits_.model = config_.engine.model;
    limits_.default_max_tokens = config_.engine.default_max_tokens;
    limits_.max_model_len = config_.engine.max_model_len;
}

HttpServer::~HttpServer() = default;

Status HttpServer::listen() {
    const auto& fe = config_.frontend;
    beast::error_code ec;
    auto address = asio::ip::make_address(fe.host, ec);
    tcp::endpoint endpoint;
    if (ec) {
        tcp::resolver resolver(io_);
        auto results = resolver.resolve(fe.host, std::to_string(fe.port), ec);
        if (ec || results.empty()) {
            return Error{"cannot resolve frontend.host '" + fe.host + "': " + ec.message()};
        }
        endpoint = *results.begin();
    } else {
        endpoint = tcp::endpoint(address, fe.port);
    }
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
        return Error{"cannot listen on " + fe.host + " port " + std::to_string(fe.port) + ": " + ec.message() +
                     "; choose another frontend.port (--port) or stop the process using it"};
    }
    accepting_ = true;
    accept();
    return Ok{};
}

void HttpServer::accept() {
    acceptor_.async_accept([this](beast::error_code ec, tcp::socket socket) {
        if (ec == asio::error::operation_aborted || !accepting_) return;
        if (!ec) {
            if (sessions_.size() >= config_.frontend.max_connections) {
                // Over the limit: close at once rather than let the backlog grow without bound.
                beast::error_code ignored;
                socket.close(ignored);
            } else {
                socket.set_option(tcp::no_delay(true), ec);
                std::make_shared<HttpSession>(*this, std::move(socket))->start();
            }
        } else if (ec == asio::error::no_descriptors) {
            log::warning("cannot accept HTTP connections: out of file descriptors");
        }
        accept();
    });
}

void HttpServer::stop_accepting() {
    accepting_ = false;
    beast::error_code ignored;
    acceptor_.close(ignored);
    // Copy: closing a session may destroy it, which edits the set.
    std::vector<HttpSession*> open(sessions_.begin(), sessions_.end());
    for (HttpSession* s : open) {
        if (sessions_.count(s)) s->close_if_idle();
    }
}

}  // namespace dpengine
