#include "http_server.hpp"

#include "core/fd_limit.hpp"
#include "core/log.hpp"
#include "head/request_body.hpp"
#include "head/tls_context.hpp"

#include <boost/asio/post.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/stream_traits.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/serialize.hpp>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <memory>
#include <optional>
#include <type_traits>

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
        case 201: return "Created";
        case 204: return "No Content";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 413: return "Payload Too Large";
        case 422: return "Unprocessable Entity";
        case 429: return "Too Many Requests";
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
    if (error.reason() == Reason::rank_lost || error.reason() == Reason::rank_misbehaved) e.status = 502;
    else if (error.reason() == Reason::timeout) e.status = 504;
    else e.status = 503;
    return e;
}

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

std::string models_response(std::string_view model, int64_t created) {
    const boost::json::object response = {
        {"object", "list"},
        {"data",
         boost::json::array{
             boost::json::object{{"id", model}, {"object", "model"}, {"created", created}, {"owned_by", "dpengine"}}}}};
    return boost::json::serialize(response);
}

// The endpoint label of the latency histograms.
std::string endpoint_label(std::string_view path) {
    if (path == "/v1/completions") return "completions";
    if (path == "/v1/chat/completions") return "chat_completions";
    if (path == "/v1/embeddings") return "embeddings";
    return std::string(path);
}

// Whether relayed event-stream bytes end with the stream's last event in the OpenAI protocol,
// "data: [DONE]" (with its blank line).
bool ends_with_done_event(std::string_view data) {
    size_t last = data.find_last_not_of("\r\n");
    if (last == std::string_view::npos || data.size() - last - 1 < 2) return false;
    std::string_view text = data.substr(0, last + 1);
    for (std::string_view marker : {std::string_view("data: [DONE]"), std::string_view("data:[DONE]")}) {
        if (!text.ends_with(marker)) continue;
        size_t at = text.size() - marker.size();
        if (at == 0 || text[at - 1] == '\n' || text[at - 1] == '\r') return true;
    }
    return false;
}

void append_hex(std::string& out, size_t n) {
    char buf[20];
    int len = std::snprintf(buf, sizeof buf, "%zx", n);
    out.append(buf, len);
}

// Descriptors the head needs besides client connections (rank and node links, ZeroMQ's own,
// the bus, the journal, pipes to the ranks): what the open-file limit keeps back.
uint64_t reserved_descriptors(const Config& config) { return 64 + 4 * uint64_t{config.dp_size()}; }

bool out_of_descriptors(const boost::system::error_code& ec) {
    return ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space || ec == asio::error::no_memory ||
        ec == boost::system::errc::too_many_files_open_in_system;
}

// The client's address as one client counts: an IPv4 client of a dual-stack socket is its IPv4 address.
asio::ip::address client_address(const asio::ip::address& a) {
    if (a.is_v6() && a.to_v6().is_v4_mapped()) return asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6());
    return a;
}

// The key of "Authorization: Bearer KEY" (the scheme's case does not matter); empty when
// there is none.
std::string_view bearer_key(std::string_view authorization) {
    constexpr std::string_view scheme = "bearer ";
    if (authorization.size() <= scheme.size()) return {};
    for (size_t i = 0; i < scheme.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(authorization[i])) != scheme[i]) return {};
    }
    std::string_view key = authorization.substr(scheme.size());
    key.remove_prefix(std::min(key.find_first_not_of(' '), key.size()));
    return key.substr(0, key.find_last_not_of(" \t") + 1);
}

}  // namespace

// What the server needs of every connection, whatever its stream (TCP or TLS over TCP).
class HttpConnection {
public:
    virtual ~HttpConnection() = default;
    // Server shutdown: idle connections close now; one in an exchange closes when it ends.
    virtual void close_if_idle() = 0;
};

// One client connection. While an exchange runs, the session keeps itself alive (`self_`),
// because the rank link holds a plain pointer to it as the request sink.
template <class Stream>
class HttpSession final : public HttpConnection,
                          public std::enable_shared_from_this<HttpSession<Stream>>,
                          public RequestSink {
    static constexpr bool tls = !std::is_same_v<Stream, tcp::socket>;
    using std::enable_shared_from_this<HttpSession<Stream>>::shared_from_this;

public:
    HttpSession(HttpServer& server, Stream stream, asio::ip::address client,
                std::shared_ptr<asio::ssl::context> tls_context = nullptr)
        : server_(server),
          stream_(std::move(stream)),
          client_(client),
          tls_context_(std::move(tls_context)),
          timer_(server.io_),
          write_timer_(server.io_) {
        server_.sessions_.insert(this);
    }

    ~HttpSession() override {
        server_.sessions_.erase(this);
        server_.release(client_);
    }

    void start() {
        if constexpr (tls) {
            // The handshake counts as the wait for the first request.
            arm_timer(server_.config_.frontend.idle_timeout, [](HttpSession& s) { s.close(); });
            stream_.async_handshake(asio::ssl::stream_base::server, [self = shared_from_this()](beast::error_code ec) {
                self->timer_.cancel();
                if (ec) return self->close();
                self->read_request();
            });
        } else {
            read_request();
        }
    }

    void close_if_idle() override {
        keep_alive_ = false;
        if (!in_exchange_ && !writing_) close();
    }

    void on_output(const wire::Output& piece) override {
        if (!response_started_) start_response(piece);
        if (!piece.data.empty()) {
            if (!first_data_seen_) {
                first_data_seen_ = true;
                server_.metrics_.first_token_seconds[metric_key_].observe(seconds_since(started_at_));
            }
            if (event_stream_) done_event_relayed_ = ends_with_done_event(piece.data);
            if (client_gone_) {
                // Nobody to write to: the exchange only waits for the engine's end.
            } else if (streaming_) {
                append_chunk(piece.data);
            } else {
                out_ += piece.data;
            }
        }
        if (piece.done) {
            engine_id_ = 0;
            finish_exchange();
        }
        // Past the cap, output goes out now rather than after the burst; and if a write the
        // client has not taken yet is still in progress, the client is not reading: it is
        // closed, and the engine stops. So a connection holds at most about twice the cap.
        if (out_.size() > server_.config_.frontend.max_buffered_output) {
            if (!writing_) return flush();
            return drop_slow_client("more than frontend.max_buffered_output (" +
                                    std::to_string(server_.config_.frontend.max_buffered_output) +
                                    " bytes) of output waits for it");
        }
        flush_soon();
    }

    void on_failure(const Error& error) override {
        engine_id_ = 0;
        fail_exchange(server_error(error));
    }

private:
    tcp::socket& socket() { return beast::get_lowest_layer(stream_); }

    void read_request() {
        parser_.emplace();
        parser_->header_limit(header_limit);
        parser_->body_limit(server_.config_.frontend.max_body_bytes);
        authorized_ = !server_.api_keys_;
        arm_timer(server_.config_.frontend.idle_timeout, [](HttpSession& s) { s.close(); });
        if (authorized_) {
            http::async_read(stream_, buffer_, *parser_,
                             [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
            return;
        }
        // With API keys the headers come first: a request without a valid key is answered
        // before its body is read.
        http::async_read_header(stream_, buffer_, *parser_,
                                [self = shared_from_this()](beast::error_code ec, size_t) { self->on_header(ec); });
    }

    void on_header(beast::error_code ec) {
        if (ec) return on_read(ec);
        const auto& req = parser_->get();
        authorized_ = server_.api_keys_->accepts(bearer_key(req[http::field::authorization]));
        std::string_view target = req.target();
        if (!authorized_ && target.substr(0, target.find('?')) != "/health") {
            timer_.cancel();
            keep_alive_ = false;  // the body, if any, is not read
            return respond_unauthorized(!req[http::field::authorization].empty());
        }
        http::async_read(stream_, buffer_, *parser_,
                         [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
    }

    void respond_unauthorized(bool key_given) {
        openai::HttpError e;
        e.status = 401;
        e.code = "invalid_api_key";
        e.message = key_given
            ? "incorrect API key provided; use a key listed (as its hash) in the head's frontend.api_keys"
            : "no API key provided: send one in an Authorization header using Bearer auth "
              "(Authorization: Bearer YOUR_KEY)";
        respond(401, "application/json", openai::error_body(e),
                key_given ? "WWW-Authenticate: Bearer realm=\"dpengine\", error=\"invalid_token\"\r\n"
                          : "WWW-Authenticate: Bearer realm=\"dpengine\"\r\n");
    }

    void on_read(beast::error_code ec) {
        timer_.cancel();
        if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::operation_aborted ||
            ec == asio::error::connection_reset || ec == asio::ssl::error::stream_truncated || !socket().is_open()) {
            return close();
        }
        keep_alive_ = false;  // after a parse error the stream position is unknown
        if (ec == http::error::body_limit) {
            return respond_error({413, "invalid_request_error",
                                  "request body is larger than " +
                                      std::to_string(server_.config_.frontend.max_body_bytes) +
                                      " bytes (frontend.max_body_bytes)",
                                  "", "body-too-large"});
        }
        if (ec == http::error::header_limit) {
            return respond_error(
                {431, "invalid_request_error", "request headers are larger than 16 KiB", "", "headers-too-large"});
        }
        if (ec) {
            return respond_error(
                {400, "invalid_request_error", "malformed HTTP request: " + ec.message(), "", "bad-http"});
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
            std::string body = "{\"status\":\"" + std::string(serving ? "ok" : "unavailable") +
                "\",\"ready_ranks\":" + std::to_string(ready) + ",\"ranks\":" + std::to_string(server_.ranks_.size());
            // Which ranks are missing, and where, so an operator sees what a partial start
            // waits for; with API keys, only for a caller with a key (it names nodes).
            if (ready < server_.ranks_.size() && authorized_) {
                body += ",\"missing\":" + json_string_array(server_.ranks_.missing_ranks());
            }
            body += "}";
            return respond(serving ? 200 : 503, "application/json", body);
        }
        if (target == "/metrics") {
            if (!get) return method_not_allowed("GET");
            server_.metrics_.open_connections = server_.sessions_.size();
            return respond(200, "text/plain; version=0.0.4",
                           render_metrics(server_.rank_view_(), server_.ranks_.refusals(), server_.metrics_));
        }
        if (target == "/v1/models") {
            if (!get) return method_not_allowed("GET");
            return respond(200, "application/json", models_response(server_.config_.engine.model, unix_now()));
        }
        if (server_.routes_engine(target)) {
            if (!post) return method_not_allowed("POST");
            return start_exchange(target, req.body());
        }
        respond_error({404, "not_found_error", "no such endpoint: " + std::string(target), "", "not-found"});
    }

    void method_not_allowed(const char* allowed) {
        respond_error({405, "invalid_request_error", std::string("this endpoint only accepts ") + allowed, "",
                       "method-not-allowed"});
    }

    // The body goes to a rank as the client wrote it; the rank's engine answers.
    void start_exchange(std::string_view path, const std::string& body) {
        auto routed = head::route_body(body, server_.model_names_);
        if (auto* error = std::get_if<openai::HttpError>(&routed)) return respond_error(*error);
        auto& routed_body = std::get<head::RoutedBody>(routed);
        wire::Request request;
        request.path = path;
        request.body = std::move(routed_body.body);
        request.stream = routed_body.stream;
        in_exchange_ = true;
        response_started_ = streaming_ = event_stream_ = first_data_seen_ = false;
        done_event_relayed_ = client_gone_ = false;
        self_ = shared_from_this();
        started_at_ = std::chrono::steady_clock::now();
        metric_key_ =
            "endpoint=\"" + endpoint_label(path) + (request.stream ? "\",stream=\"true\"" : "\",stream=\"false\"");
        auto id = server_.ranks_.submit(std::move(request), this, routed_body.token_limit);
        if (!id) return end_exchange_with_status(server_error(id.error()));
        engine_id_ = *id;
        arm_timer(server_.config_.frontend.request_timeout, [](HttpSession& s) {
            s.fail_exchange(
                server_error(Error{"the request did not finish within frontend.request_timeout", "timeout"}));
        });
        watch_peer();
    }

    // The engine's first piece: its status and content type. A response that is complete in
    // one piece gets a Content-Length; one that comes in pieces (a stream of events) is sent
    // as it comes, chunked (HTTP/1.0: until the close).
    void start_response(const wire::Output& piece) {
        response_started_ = true;
        int status = piece.status ? static_cast<int>(piece.status) : 200;
        std::string_view type = piece.content_type.empty() ? std::string_view("application/json") : piece.content_type;
        ++server_.metrics_.responses_by_status[status];
        event_stream_ = type.starts_with("text/event-stream");
        if (piece.done) return start_whole_response(status, type, piece.data.size());
        streaming_ = true;
        append_status_and_type(status, type);
        out_ += event_stream_ ? "\r\nCache-Control: no-cache\r\n" : "\r\n";
        out_ += chunked_ ? "Transfer-Encoding: chunked\r\n" : "";
        if (!chunked_) keep_alive_ = false;  // HTTP/1.0: the end of the stream is the close
        out_ += keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    }

    void append_status_and_type(int status, std::string_view type) {
        out_ += "HTTP/1.1 ";
        out_ += std::to_string(status);
        out_ += ' ';
        out_ += reason_phrase(status);
        out_ += "\r\nContent-Type: ";
        out_ += type;
    }

    // `extra_headers`: whole header lines, each ending in CRLF.
    void start_whole_response(int status, std::string_view type, size_t length, std::string_view extra_headers = {}) {
        append_status_and_type(status, type);
        out_ += "\r\nContent-Length: ";
        out_ += std::to_string(length);
        out_ += "\r\n";
        out_ += extra_headers;
        out_ += keep_alive_ ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n";
    }

    void abort_engine_request() {
        if (engine_id_) server_.ranks_.abort(engine_id_);
        engine_id_ = 0;
    }

    // dpengine's own failure of an exchange (rank lost, timeout, shutdown). Before the
    // response started it is an OpenAI error response; inside an event stream, an error event
    // and the stream's end; inside another response cut short, the connection closes, so the
    // client cannot take it for complete.
    void fail_exchange(const openai::HttpError& error) {
        if (!in_exchange_) return;
        abort_engine_request();
        if (!response_started_) return end_exchange_with_status(error);
        if (!event_stream_) {
            in_exchange_ = false;
            return close_after_flush();
        }
        append_chunk(openai::stream_error_event(error));
        append_chunk("data: [DONE]\n\n");
        end_stream();
    }

    void finish_exchange() {
        server_.metrics_.request_seconds[metric_key_].observe(seconds_since(started_at_));
        if (streaming_) return end_stream();
        timer_.cancel();
        in_exchange_ = false;
        response_complete_ = true;
    }

    static double seconds_since(std::chrono::steady_clock::time_point t) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    }

    void end_stream() {
        timer_.cancel();
        if (client_gone_) {
            // See peer_gone(): the exchange is over, and with it the session (not from inside
            // a rank link's callback, which may still use it).
            in_exchange_ = false;
            out_.clear();
            asio::post(server_.io_, [self = shared_from_this()] { self->self_.reset(); });
            return;
        }
        if (chunked_) out_ += "0\r\n\r\n";
        in_exchange_ = false;
        response_complete_ = true;
        flush();
    }

    void end_exchange_with_status(const openai::HttpError& error) {
        timer_.cancel();
        in_exchange_ = false;
        respond_error(error);
    }

    // What is written goes out, then the connection closes.
    void close_after_flush() {
        timer_.cancel();
        keep_alive_ = false;
        // Nothing left to write and no write under way: no on_write() will close it.
        if (!writing_ && out_.empty()) return close();
        response_complete_ = true;
        flush();
    }

    void append_chunk(std::string_view data) {
        if (chunked_) {
            append_hex(out_, data.size());
            out_ += "\r\n";
            out_ += data;
            out_ += "\r\n";
        } else {
            out_ += data;
        }
    }

    void respond_error(const openai::HttpError& error) {
        respond(error.status, "application/json", openai::error_body(error));
    }

    void respond(int status, const char* content_type, const std::string& body, std::string_view extra_headers = {}) {
        ++server_.metrics_.responses_by_status[status];
        start_whole_response(status, content_type, body.size(), extra_headers);
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
        if (writing_ || out_.empty() || !socket().is_open()) return;
        writing_ = true;
        std::swap(out_, in_write_);
        written_ = 0;
        last_progress_ = std::chrono::steady_clock::now();
        watch_write_deadline();
        write_some();
    }

    // The buffer goes out in as many writes as the client's pace needs; each one that takes
    // bytes is progress for the write deadline.
    void write_some() {
        stream_.async_write_some(
            asio::buffer(in_write_.data() + written_, in_write_.size() - written_),
            [self = shared_from_this()](beast::error_code ec, size_t n) { self->on_write_some(ec, n); });
    }

    void on_write_some(beast::error_code ec, size_t n) {
        if (!ec) {
            written_ += n;
            last_progress_ = std::chrono::steady_clock::now();
            if (written_ < in_write_.size()) return write_some();
        }
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
            socket().cancel(ignored);
            return;
        }
        next_request_after_watch_ = true;
        arm_timer(server_.config_.frontend.idle_timeout, [](HttpSession& s) { s.close(); });
    }

    // A write that takes no byte for frontend.write_timeout means the client stopped reading.
    // One timer per session, moved on only when it fires, so a busy stream costs no timer
    // operations per write.
    void watch_write_deadline() {
        if (write_deadline_armed_) return;
        write_deadline_armed_ = true;
        auto timeout = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::duration<double>(server_.config_.frontend.write_timeout));
        write_timer_.expires_at(last_progress_ + timeout);
        write_timer_.async_wait([self = shared_from_this(), timeout](beast::error_code ec) {
            self->write_deadline_armed_ = false;
            if (ec || !self->writing_) return;
            if (std::chrono::steady_clock::now() < self->last_progress_ + timeout) return self->watch_write_deadline();
            self->drop_slow_client("it took no bytes for frontend.write_timeout (" +
                                   format_seconds(self->server_.config_.frontend.write_timeout) + " s)");
        });
    }

    static std::string format_seconds(double s) { return fmt::format("{:g}", s); }

    // The client does not read what it asked for: its request ends on the rank, the
    // connection closes, and what was waiting for it is freed.
    void drop_slow_client(const std::string& why) {
        ++server_.metrics_.connections_closed[ReasonCode("slow-client")];
        if (auto suppressed = server_.log_throttle_.admit("slow-client")) {
            log::warning("closed the HTTP connection of {}: {}; it does not read its response{}", client_.to_string(),
                         why, LogThrottle::suppressed_note(*suppressed));
        }
        if (in_exchange_) {
            abort_engine_request();
            in_exchange_ = false;
        }
        out_.clear();
        out_.shrink_to_fit();
        // This may run inside a rank link's callback: the session outlives it.
        asio::post(server_.io_, [self = shared_from_this()] {});
        close();
    }

    // While a request is served nothing else reads the socket, so a client that disconnects
    // would go unnoticed; this read notices it (and keeps any pipelined bytes for later).
    void watch_peer() {
        if (watching_ || buffer_.size() >= read_ahead_limit) return;
        watching_ = true;
        stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, size_t n) {
            self->watching_ = false;
            // After the exchange ended the session waits for this read to parse what comes next;
            // the read may end either way: cancelled (bytes were already buffered) or with data.
            bool cancelled_to_resume = std::exchange(self->resume_after_cancel_, false);
            bool waiting_for_next = std::exchange(self->next_request_after_watch_, false);
            bool resume = cancelled_to_resume || waiting_for_next;
            if (ec && !(ec == asio::error::operation_aborted && resume)) return self->peer_gone();
            if (!ec) self->buffer_.commit(n);
            if (self->in_exchange_) return self->watch_peer();
            if (resume) {
                self->timer_.cancel();
                self->read_request();
            }
        });
    }

    void peer_gone() {
        if (client_gone_) return;  // closed already; the exchange ends by itself
        if (in_exchange_ && streaming_ && done_event_relayed_) {
            // The client has the whole stream, to its "data: [DONE]", and left before the
            // engine's response formally ended (the openai SDK closes the connection at
            // [DONE], while the engine's last piece comes with the end of its response): the
            // request is not aborted, so it ends on the rank as it would have anyway, and
            // counts as served. frontend.request_timeout still bounds the wait.
            client_gone_ = true;
            out_.clear();
            close_socket();
            return;
        }
        if (in_exchange_) {
            abort_engine_request();
            in_exchange_ = false;
        }
        self_.reset();
        close();
    }

    template <class F>
    void arm_timer(double seconds, F on_expiry) {
        timer_.expires_after(
            std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(seconds)));
        timer_.async_wait([self = shared_from_this(), on_expiry](beast::error_code ec) {
            if (!ec) on_expiry(*self);
        });
    }

    void close_socket() {
        beast::error_code ignored;
        write_timer_.cancel();
        if (socket().is_open()) {
            socket().shutdown(tcp::socket::shutdown_both, ignored);
            socket().close(ignored);
        }
    }

    void close() {
        timer_.cancel();
        close_socket();
        self_.reset();
    }

    HttpServer& server_;
    Stream stream_;
    const asio::ip::address client_;
    const std::shared_ptr<asio::ssl::context> tls_context_;  // TLS: the context this connection started with
    asio::steady_timer timer_;                               // the wait for a request, or the request's deadline
    asio::steady_timer write_timer_;                         // the write deadline
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    std::shared_ptr<HttpSession> self_;
    bool keep_alive_ = true;
    bool chunked_ = true;
    bool authorized_ = true;  // no API keys, or the request carries one of them
    bool writing_ = false;
    bool write_deadline_armed_ = false;
    bool flush_posted_ = false;
    bool watching_ = false;
    bool response_complete_ = false;
    bool next_request_after_watch_ = false;
    bool resume_after_cancel_ = false;
    std::string out_, in_write_;
    size_t written_ = 0;                                     // of in_write_
    std::chrono::steady_clock::time_point last_progress_{};  // the client last took bytes

    bool in_exchange_ = false;         // a request is with a rank, or its response is being written
    uint64_t engine_id_ = 0;           // the rank link's id while a rank works on it
    bool response_started_ = false;    // the engine's first piece arrived
    bool streaming_ = false;           // the response is sent as it comes (chunked)
    bool event_stream_ = false;        // ... and it is text/event-stream
    bool done_event_relayed_ = false;  // ... whose last relayed event was "data: [DONE]"
    bool client_gone_ = false;         // the client left after that; the exchange waits for the engine's end
    std::chrono::steady_clock::time_point started_at_{};
    bool first_data_seen_ = false;
    std::string metric_key_;  // the latency histograms' labels for this exchange
};

HttpServer::HttpServer(asio::io_context& io, const Config& config, RankLink& ranks,
                       std::function<std::vector<RankInfo>()> rank_view)
    : io_(io), config_(config), ranks_(ranks), rank_view_(std::move(rank_view)), acceptor_(io), accept_pause_(io) {
    model_names_ = {config_.engine.model, config_.engine.served_model_name};
}

Status HttpServer::config_changed() {
    const auto& fe = config_.frontend;
    // Load first, change after: a file that does not load leaves the running front door as it is.
    std::optional<api_keys::KeySet> keys;
    if (!fe.api_keys.empty()) {
        auto loaded = api_keys::load(fe.api_keys);
        if (!loaded) return loaded.error();
        keys = std::move(loaded).value();
    }
    std::shared_ptr<asio::ssl::context> tls;
    if (!fe.tls_certificate.empty()) {
        auto loaded = load_tls_context(fe.tls_certificate, fe.tls_key);
        if (!loaded) return loaded.error();
        tls = std::move(loaded).value();
    }
    api_keys_ = std::move(keys);
    tls_ = std::move(tls);
    model_names_ = {config_.engine.model, config_.engine.served_model_name};
    uint32_t previous = std::exchange(max_connections_, 0);
    if (connection_limit() != previous && max_connections_ < fe.max_connections) {
        log::notice(
            "frontend.max_connections is {}, but the open-file limit ({}) leaves room for {} client "
            "connections: serving at most that many at once (raise LimitNOFILE= or ulimit -n for more)",
            fe.max_connections, open_file_limit(), max_connections_);
    }
    return Ok{};
}

uint32_t HttpServer::connection_limit() {
    if (max_connections_ == 0) {
        const uint64_t limit = open_file_limit(), reserved = reserved_descriptors(config_);
        const uint64_t room = limit > reserved + 16 ? limit - reserved : 16;
        max_connections_ = static_cast<uint32_t>(std::min<uint64_t>(config_.frontend.max_connections, room));
    }
    return max_connections_;
}

bool HttpServer::routes_engine(std::string_view path) const {
    if (path == "/v1/completions" || path == "/v1/chat/completions" || path == "/v1/embeddings") return true;
    const auto& extra = config_.engine.passthrough_paths;
    return std::find(extra.begin(), extra.end(), path) != extra.end();
}

HttpServer::~HttpServer() = default;

Status HttpServer::listen() {
    if (auto loaded = config_changed(); !loaded) return loaded;
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
        if (out_of_descriptors(ec)) return pause_accepting(ec);
        accept_backoff_ = std::chrono::milliseconds(0);
        // Any other error ends that one connection (ECONNABORTED and the like).
        if (!ec) admit(std::move(socket));
        accept();
    });
}

void HttpServer::pause_accepting(const boost::system::error_code& ec) {
    // The connection waits in the backlog; accepting again at once would only fail again, as
    // fast as the loop turns.
    accept_backoff_ = std::clamp(accept_backoff_ * 2, std::chrono::milliseconds(100), std::chrono::milliseconds(1000));
    if (auto suppressed = log_throttle_.admit("out-of-descriptors")) {
        log::warning(
            "cannot accept HTTP connections: {} (open-file limit {}, {} client connections open); accepting "
            "again in {} ms{}",
            ec.message(), open_file_limit(), sessions_.size(), accept_backoff_.count(),
            LogThrottle::suppressed_note(*suppressed));
    }
    accept_pause_.expires_after(accept_backoff_);
    accept_pause_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec && accepting_) accept();
    });
}

void HttpServer::admit(tcp::socket socket) {
    beast::error_code ec;
    auto remote = socket.remote_endpoint(ec);
    if (ec) return;  // gone already
    const auto client = client_address(remote.address());
    auto refuse = [&](ReasonCode reason, const std::string& why) {
        ++metrics_.connections_closed[reason];
        if (auto suppressed = log_throttle_.admit(reason)) {
            log::warning("closed a new HTTP connection from {}: {}{}", client.to_string(), why,
                         LogThrottle::suppressed_note(*suppressed));
        }
        beast::error_code ignored;
        socket.close(ignored);
    };
    // Over a limit: close at once rather than let the backlog grow without bound.
    if (sessions_.size() >= connection_limit()) {
        return refuse("connection-limit",
                      std::to_string(max_connections_) +
                          " connections are open (frontend.max_connections, within the "
                          "open-file limit)");
    }
    uint32_t& count = per_client_[client];
    if (count >= config_.frontend.max_connections_per_client) {
        return refuse("client-limit",
                      "it has " + std::to_string(count) + " open already (frontend.max_connections_per_client)");
    }
    ++count;
    socket.set_option(tcp::no_delay(true), ec);
    if (tls_) {
        std::make_shared<HttpSession<asio::ssl::stream<tcp::socket>>>(
            *this, asio::ssl::stream<tcp::socket>(std::move(socket), *tls_), client, tls_)
            ->start();
    } else {
        std::make_shared<HttpSession<tcp::socket>>(*this, std::move(socket), client)->start();
    }
}

void HttpServer::release(const asio::ip::address& client) {
    auto it = per_client_.find(client);
    if (it != per_client_.end() && --it->second == 0) per_client_.erase(it);
}

void HttpServer::stop_accepting() {
    accepting_ = false;
    beast::error_code ignored;
    acceptor_.close(ignored);
    accept_pause_.cancel();
    // Copy: closing a session may destroy it, which edits the set.
    std::vector<HttpConnection*> open(sessions_.begin(), sessions_.end());
    for (HttpConnection* s : open) {
        if (sessions_.count(s)) s->close_if_idle();
    }
}

}  // namespace dpengine
