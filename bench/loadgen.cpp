// dpengine-loadgen: a single-threaded asio HTTP/1.1 keep-alive load generator for dpengined.
//
// Modes:
//   load (default)  C connections, each sending one request after another (keep-alive), for
//                   --duration seconds after --warmup seconds (or --requests N in total).
//                   Counts completed requests, errors and tokens (SSE events carrying text for
//                   streams, usage.completion_tokens otherwise); reports rates and latency.
//   hold            --hold: opens C connections, each starts one request (--hold-kind stream)
//                   or none (--hold-kind tcp), waits until every one is established (response
//                   headers seen / connected), waits --settle seconds, then reports the RSS
//                   growth of --watch-pid per connection.
//
// With --watch-pid PID the CPU time (utime+stime from /proc/PID/stat) and RSS of that process
// are sampled at the start and the end of the measurement window.
//
// Output: one "key: value" line per figure.
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using boost::system::error_code;

namespace {

struct Options {
    std::string host = "127.0.0.1";
    uint16_t port = 8000;
    uint32_t connections = 64;
    uint64_t requests = 0;  // 0: run for the duration
    double duration = 5.0;
    double warmup = 1.0;
    std::string method;  // default: POST when the path is a completions endpoint, else GET
    std::string path = "/v1/completions";
    bool stream = false;
    uint32_t max_tokens = 1;
    std::string prompt = "The quick brown fox jumps over the lazy dog";
    std::string body;  // overrides the generated body
    int watch_pid = 0;
    bool hold = false;
    std::string hold_kind = "stream";
    double settle = 1.0;
    double timeout = 0;  // overall safety limit; 0: derived
    uint32_t connect_parallel = 256;
};

[[noreturn]] void usage(const char* msg) {
    std::fprintf(stderr,
                 "dpengine-loadgen: %s\n"
                 "usage: dpengine-loadgen --port P [--host H] [-c CONNS] [--duration S] [--warmup S]\n"
                 "         [--requests N] [--path PATH] [--method GET|POST] [--stream] [--max-tokens N]\n"
                 "         [--prompt TEXT] [--body JSON] [--watch-pid PID] [--timeout S]\n"
                 "         [--hold [--hold-kind stream|tcp] [--settle S] [--connect-parallel N]]\n",
                 msg);
    std::exit(2);
}

// ---- /proc sampling ------------------------------------------------------------------------

struct ProcSample {
    bool ok = false;
    double cpu_s = 0;  // utime + stime
    long rss_kb = 0;
};

ProcSample sample_proc(int pid) {
    ProcSample s;
    if (pid <= 0) return s;
    std::string path = "/proc/" + std::to_string(pid);
    std::ifstream stat(path + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    auto close = text.rfind(')');
    if (close == std::string::npos) return s;
    std::istringstream fields(text.substr(close + 2));
    std::vector<std::string> f;
    for (std::string x; fields >> x;) f.push_back(x);
    // After "pid (comm) ": f[0] is field 3 (state); utime is field 14, stime field 15.
    if (f.size() < 13) return s;
    double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
    s.cpu_s = (std::strtod(f[11].c_str(), nullptr) + std::strtod(f[12].c_str(), nullptr)) / tick;
    std::ifstream status(path + "/status");
    for (std::string line; std::getline(status, line);) {
        if (line.rfind("VmRSS:", 0) == 0) s.rss_kb = std::strtol(line.c_str() + 6, nullptr, 10);
    }
    s.ok = true;
    return s;
}

double self_cpu_s() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

bool iequals_prefix(std::string_view s, std::string_view prefix) {
    if (s.size() < prefix.size()) return false;
    for (size_t i = 0; i < prefix.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
    }
    return true;
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

std::string json_escape(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '"' || c == '\\') out += '\\', out += c;
        else if (static_cast<unsigned char>(c) < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof buf, "\\u%04x", c);
            out += buf;
        } else out += c;
    }
    return out;
}

class Loadgen;

// ---- one connection ------------------------------------------------------------------------

class Conn {
public:
    Conn(Loadgen& lg, asio::io_context& io) : lg_(lg), sock_(io) {}

    void connect();
    void close() {
        error_code ignored;
        sock_.close(ignored);
    }
    bool established() const { return established_; }

private:
    enum class State { idle, headers, body, chunk_size, chunk_data, chunk_crlf, trailer };

    void on_connect(const error_code& ec);
    void send();
    void read();
    void on_read(const error_code& ec, size_t n);
    bool parse();
    bool parse_headers(std::string_view head);
    void feed_sse(std::string_view data);
    void on_event(std::string_view ev);
    void complete();
    void fail(const char* why);
    void connect_again();

    Loadgen& lg_;
    uint64_t gen_ = 0;
    tcp::socket sock_;
    std::string buf_;  // received bytes not yet parsed start at pos_
    size_t pos_ = 0;
    std::unique_ptr<char[]> rbuf_;
    size_t rsize_ = 0;
    State st_ = State::idle;
    size_t remaining_ = 0;
    int status_ = 0;
    bool chunked_ = false;
    bool close_after_ = false;
    bool got_done_ = false;
    bool stream_error_ = false;
    bool first_token_seen_ = false;
    bool established_ = false;
    bool reading_ = false;
    bool closed_ = false;
    std::string body_;  // Content-Length body
    std::string sse_;   // de-chunked SSE bytes not yet consumed
    Clock::time_point sent_at_;
};

// ---- the generator -------------------------------------------------------------------------

class Loadgen {
public:
    explicit Loadgen(Options o) : opt_(std::move(o)), io_(1), window_timer_(io_), safety_timer_(io_) {
        if (opt_.method.empty()) opt_.method = opt_.path.find("completions") != std::string::npos ? "POST" : "GET";
        endpoint_ = tcp::endpoint(asio::ip::make_address(opt_.host), opt_.port);
        build_request();
    }

    int run() {
        start_ = Clock::now();
        double limit =
            opt_.timeout > 0 ? opt_.timeout : (opt_.hold ? 120.0 + opt_.settle : opt_.warmup + opt_.duration + 60.0);
        if (opt_.requests) limit = opt_.timeout > 0 ? opt_.timeout : 600.0;
        safety_timer_.expires_after(std::chrono::milliseconds(static_cast<int64_t>(limit * 1000)));
        safety_timer_.async_wait([this](const error_code& ec) {
            if (ec) return;
            timed_out_ = true;
            finish();
        });
        conns_.reserve(opt_.connections);
        for (uint32_t i = 0; i < opt_.connections; ++i) conns_.push_back(std::make_unique<Conn>(*this, io_));
        if (opt_.hold) {
            before_ = sample_proc(opt_.watch_pid);
        } else if (opt_.requests) {
            begin_window();
        } else if (opt_.warmup > 0) {
            window_timer_.expires_after(std::chrono::milliseconds(static_cast<int64_t>(opt_.warmup * 1000)));
            window_timer_.async_wait([this](const error_code& ec) {
                if (!ec) begin_window();
            });
        } else {
            begin_window();
        }
        connect_more();
        io_.run();
        report();
        std::fflush(stdout);
        std::fflush(stderr);
        std::_Exit(timed_out_ && !opt_.hold ? 1 : 0);
    }

    // -- called by connections --
    const Options& opt() const { return opt_; }
    const tcp::endpoint& endpoint() const { return endpoint_; }
    const std::string& request() const { return request_; }
    bool stopping() const { return stopping_; }

    // May this connection send another request?
    bool may_send() {
        if (stopping_ || opt_.hold) return false;
        if (opt_.requests && issued_ >= opt_.requests) return false;
        ++issued_;
        return true;
    }
    void on_connected(Conn& c, bool ok, const std::string& err) {
        --connecting_;
        if (!ok) {
            ++connect_errors_;
            if (first_error_.empty()) first_error_ = "connect: " + err;
            (void)c;
        } else {
            ++connected_;
        }
        if (opt_.hold && opt_.hold_kind == "tcp" && ok) on_established();
        connect_more();
        if (opt_.hold) check_all_established();
    }
    void note_reconnect() {
        ++connecting_;
        ++reconnects_;
    }
    void on_established() {
        ++established_;
        check_all_established();
    }
    void on_token(Clock::time_point sent_at, bool first) {
        if (!in_window_) return;
        ++tokens_;
        if (first) ttft_us_.push_back(micros(Clock::now() - sent_at));
    }
    void on_response(Clock::time_point sent_at, bool ok, uint64_t usage_tokens, const char* why) {
        if (opt_.hold) ++hold_responses_;
        if (!ok) {
            ++errors_total_;
            if (first_error_.empty() && why) first_error_ = why;
        }
        if (in_window_) {
            ++requests_;
            if (!ok) ++errors_;
            tokens_ += usage_tokens;
            latency_us_.push_back(micros(Clock::now() - sent_at));
        }
        ++completed_total_;
        if (opt_.requests && completed_total_ >= opt_.requests) finish();
    }
    void on_conn_error(const char* why) {
        ++conn_errors_;
        if (first_error_.empty()) first_error_ = why;
        if (opt_.hold) {
            ++hold_failed_;
            check_all_established();
        }
    }

private:
    static uint32_t micros(Clock::duration d) {
        return static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::microseconds>(d).count());
    }

    void build_request() {
        std::string body = opt_.body;
        if (body.empty() && opt_.method == "POST") {
            body = "{\"model\":\"synthetic\",\"prompt\":\"" + json_escape(opt_.prompt) +
                "\",\"max_tokens\":" + std::to_string(opt_.max_tokens) + (opt_.stream ? ",\"stream\":true" : "") + "}";
        }
        request_ = opt_.method + " " + opt_.path + " HTTP/1.1\r\nHost: " + opt_.host + ":" + std::to_string(opt_.port) +
            "\r\nUser-Agent: dpengine-loadgen\r\nAccept: */*\r\n";
        if (opt_.method == "POST") {
            request_ +=
                "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
        } else {
            request_ += "\r\n";
        }
    }

    void connect_more() {
        while (next_conn_ < conns_.size() && connecting_ < opt_.connect_parallel && !stopping_) {
            ++connecting_;
            conns_[next_conn_++]->connect();
        }
    }

    void check_all_established() {
        if (!opt_.hold || settling_ || stopping_) return;
        if (established_ + hold_failed_ + connect_errors_ < opt_.connections) return;
        settling_ = true;
        established_at_ = Clock::now();
        window_timer_.expires_after(std::chrono::milliseconds(static_cast<int64_t>(opt_.settle * 1000)));
        window_timer_.async_wait([this](const error_code& ec) {
            if (ec) return;
            after_ = sample_proc(opt_.watch_pid);
            finish();
        });
    }

    void begin_window() {
        in_window_ = true;
        window_start_ = Clock::now();
        server_start_ = sample_proc(opt_.watch_pid);
        client_cpu_start_ = self_cpu_s();
        requests_ = errors_ = tokens_ = 0;
        latency_us_.clear();
        ttft_us_.clear();
        if (!opt_.requests) {
            window_timer_.expires_after(std::chrono::milliseconds(static_cast<int64_t>(opt_.duration * 1000)));
            window_timer_.async_wait([this](const error_code& ec) {
                if (!ec) finish();
            });
        }
    }

    void finish() {
        if (stopping_) return;
        stopping_ = true;
        if (in_window_) {
            window_end_ = Clock::now();
            server_end_ = sample_proc(opt_.watch_pid);
            client_cpu_end_ = self_cpu_s();
            in_window_ = false;
        }
        for (auto& c : conns_) c->close();
        window_timer_.cancel();
        safety_timer_.cancel();
        io_.stop();
    }

    static double percentile(std::vector<uint32_t>& v, double p) {
        if (v.empty()) return 0;
        size_t k = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
        std::nth_element(v.begin(), v.begin() + k, v.end());
        return v[k] / 1000.0;
    }

    void report() {
        auto kv = [](const char* k, const char* fmt, auto v) {
            std::printf("%s: ", k);
            std::printf(fmt, v);
            std::printf("\n");
        };
        if (opt_.hold) {
            kv("mode", "%s", ("hold-" + opt_.hold_kind).c_str());
            kv("connections_requested", "%u", opt_.connections);
            kv("connections_established", "%" PRIu64, established_);
            kv("connect_errors", "%" PRIu64, connect_errors_);
            kv("connection_errors", "%" PRIu64, conn_errors_);
            kv("responses_completed", "%" PRIu64, hold_responses_);
            kv("responses_failed", "%" PRIu64, errors_total_);
            if (timed_out_) kv("timed_out", "%s", "yes");
            if (before_.ok && after_.ok) {
                kv("server_rss_before_kb", "%ld", before_.rss_kb);
                kv("server_rss_after_kb", "%ld", after_.rss_kb);
                double per = established_ ? static_cast<double>(after_.rss_kb - before_.rss_kb) / established_ : 0;
                kv("server_rss_per_connection_kb", "%.2f", per);
            }
            if (!first_error_.empty()) kv("first_error", "%s", first_error_.c_str());
            return;
        }
        double secs = std::chrono::duration<double>(window_end_ - window_start_).count();
        if (secs <= 0) secs = 1e-9;
        kv("mode", "%s", opt_.stream ? "stream" : "plain");
        kv("connections", "%u", opt_.connections);
        kv("connected", "%" PRIu64, connected_);
        kv("reconnects", "%" PRIu64, reconnects_);
        kv("window_s", "%.3f", secs);
        kv("requests", "%" PRIu64, requests_);
        kv("errors", "%" PRIu64, errors_);
        kv("errors_total", "%" PRIu64, errors_total_ + connect_errors_ + conn_errors_);
        kv("requests_per_s", "%.1f", requests_ / secs);
        kv("tokens", "%" PRIu64, tokens_);
        kv("tokens_per_s", "%.1f", tokens_ / secs);
        kv("latency_p50_ms", "%.3f", percentile(latency_us_, 0.50));
        kv("latency_p99_ms", "%.3f", percentile(latency_us_, 0.99));
        if (opt_.stream) {
            kv("ttft_p50_ms", "%.3f", percentile(ttft_us_, 0.50));
            kv("ttft_p99_ms", "%.3f", percentile(ttft_us_, 0.99));
        }
        kv("client_cpu_util", "%.3f", (client_cpu_end_ - client_cpu_start_) / secs);
        if (server_start_.ok && server_end_.ok) {
            double cpu = server_end_.cpu_s - server_start_.cpu_s;
            kv("server_cpu_s", "%.3f", cpu);
            kv("server_cpu_util", "%.3f", cpu / secs);
            if (tokens_) kv("server_cpu_us_per_token", "%.3f", cpu * 1e6 / tokens_);
            if (requests_) kv("server_cpu_us_per_request", "%.3f", cpu * 1e6 / requests_);
            kv("server_rss_kb", "%ld", server_end_.rss_kb);
        }
        if (timed_out_) kv("timed_out", "%s", "yes");
        if (!first_error_.empty()) kv("first_error", "%s", first_error_.c_str());
    }

    Options opt_;
    asio::io_context io_;
    asio::steady_timer window_timer_, safety_timer_;
    tcp::endpoint endpoint_;
    std::string request_;
    std::vector<std::unique_ptr<Conn>> conns_;
    size_t next_conn_ = 0;
    uint32_t connecting_ = 0;
    uint64_t connected_ = 0, connect_errors_ = 0, conn_errors_ = 0, hold_failed_ = 0;
    uint64_t established_ = 0, reconnects_ = 0, hold_responses_ = 0;
    uint64_t issued_ = 0, completed_total_ = 0, errors_total_ = 0;
    uint64_t requests_ = 0, errors_ = 0, tokens_ = 0;
    std::vector<uint32_t> latency_us_, ttft_us_;
    bool in_window_ = false, stopping_ = false, settling_ = false, timed_out_ = false;
    Clock::time_point start_, window_start_, window_end_, established_at_;
    ProcSample server_start_, server_end_, before_, after_;
    double client_cpu_start_ = 0, client_cpu_end_ = 0;
    std::string first_error_;
};

// ---- Conn implementation -------------------------------------------------------------------

void Conn::connect() {
    closed_ = false;
    ++gen_;
    sock_.async_connect(lg_.endpoint(), [this](const error_code& ec) { on_connect(ec); });
}

void Conn::connect_again() {
    lg_.note_reconnect();
    connect();
}

void Conn::on_connect(const error_code& ec) {
    if (ec) {
        lg_.on_connected(*this, false, ec.message());
        return;
    }
    error_code ignored;
    sock_.set_option(tcp::no_delay(true), ignored);
    lg_.on_connected(*this, true, {});
    if (lg_.stopping()) return;
    bool tcp_only = lg_.opt().hold && lg_.opt().hold_kind == "tcp";
    if (tcp_only) {
        read();  // notices the server closing; nothing is sent
        return;
    }
    if (lg_.opt().hold || lg_.may_send()) send();
    read();
}

void Conn::send() {
    st_ = State::headers;
    status_ = 0;
    chunked_ = false;
    close_after_ = false;
    got_done_ = stream_error_ = first_token_seen_ = false;
    body_.clear();
    sse_.clear();
    sent_at_ = Clock::now();
    const std::string& req = lg_.request();
    // A failed write shows up as a failed read too; the read side handles it.
    asio::async_write(sock_, asio::buffer(req), [](const error_code&, size_t) {});
}

void Conn::read() {
    if (reading_) return;
    reading_ = true;
    if (pos_ > 0 && pos_ == buf_.size()) {
        buf_.clear();
        pos_ = 0;
    } else if (pos_ > 65536 && pos_ * 2 > buf_.size()) {
        buf_.erase(0, pos_);
        pos_ = 0;
    }
    if (!rbuf_) {
        // Held connections mostly sit idle: a small buffer keeps 10000 of them cheap.
        rsize_ = lg_.opt().hold ? 2048 : 16384;
        rbuf_ = std::make_unique<char[]>(rsize_);
    }
    sock_.async_read_some(asio::buffer(rbuf_.get(), rsize_), [this](const error_code& ec, size_t n) {
        buf_.append(rbuf_.get(), n);
        reading_ = false;
        on_read(ec, n);
    });
}

void Conn::on_read(const error_code& ec, size_t) {
    if (lg_.stopping()) return;
    if (ec) {
        if (closed_) return;
        closed_ = true;
        if (st_ != State::idle || lg_.opt().hold) {
            if (ec == asio::error::eof) {
                fail(st_ == State::idle ? "server closed the connection" : "server closed the connection mid-response");
            } else {
                fail(ec == asio::error::connection_reset ? "connection reset by the server" : "read failed");
            }
        } else if (!lg_.opt().hold) {
            // Closed between requests: reconnect and go on.
            close();
            buf_.clear();
            pos_ = 0;
            connect_again();
        }
        return;
    }
    uint64_t gen = gen_;
    if (!parse()) {
        closed_ = true;
        fail("malformed response");
        return;
    }
    if (gen == gen_ && !closed_) read();
}

void Conn::fail(const char* why) {
    close();
    lg_.on_conn_error(why);
    if (!lg_.opt().hold && !lg_.stopping()) {
        // An exchange that broke counts as an error; carry on with a new connection.
        lg_.on_response(sent_at_, false, 0, why);
        buf_.clear();
        pos_ = 0;
        st_ = State::idle;
        connect_again();
    }
}

bool Conn::parse() {
    for (;;) {
        std::string_view avail(buf_.data() + pos_, buf_.size() - pos_);
        switch (st_) {
            case State::idle: return avail.empty();  // bytes nobody asked for
            case State::headers: {
                auto end = avail.find("\r\n\r\n");
                if (end == std::string_view::npos) return avail.size() < 65536;
                if (!parse_headers(avail.substr(0, end))) return false;
                pos_ += end + 4;
                if (lg_.opt().hold && !established_) {
                    established_ = true;
                    lg_.on_established();
                }
                if (chunked_) {
                    st_ = State::chunk_size;
                } else {
                    st_ = State::body;
                }
                if (st_ == State::body && remaining_ == 0) complete();
                break;
            }
            case State::body: {
                size_t take = std::min(remaining_, avail.size());
                body_.append(avail.data(), take);
                pos_ += take;
                remaining_ -= take;
                if (remaining_ > 0) return true;
                complete();
                break;
            }
            case State::chunk_size: {
                auto eol = avail.find("\r\n");
                if (eol == std::string_view::npos) return avail.size() < 1024;
                size_t size = 0;
                auto [p, ec] = std::from_chars(avail.data(), avail.data() + eol, size, 16);
                if (ec != std::errc()) return false;
                (void)p;
                pos_ += eol + 2;
                if (size == 0) {
                    st_ = State::trailer;
                } else {
                    remaining_ = size;
                    st_ = State::chunk_data;
                }
                break;
            }
            case State::chunk_data: {
                if (avail.empty()) return true;
                size_t take = std::min(remaining_, avail.size());
                feed_sse(avail.substr(0, take));
                pos_ += take;
                remaining_ -= take;
                if (remaining_ == 0) st_ = State::chunk_crlf;
                break;
            }
            case State::chunk_crlf:
                if (avail.size() < 2) return true;
                if (avail[0] != '\r' || avail[1] != '\n') return false;
                pos_ += 2;
                st_ = State::chunk_size;
                break;
            case State::trailer: {
                auto eol = avail.find("\r\n");
                if (eol == std::string_view::npos) return true;
                pos_ += eol + 2;
                if (eol == 0) complete();
                break;
            }
        }
        if (closed_) return true;
    }
}

bool Conn::parse_headers(std::string_view head) {
    // "HTTP/1.1 200 OK"
    if (head.size() < 12 || head.substr(0, 5) != "HTTP/") return false;
    auto sp = head.find(' ');
    if (sp == std::string_view::npos) return false;
    status_ = std::atoi(std::string(head.substr(sp + 1, 3)).c_str());
    remaining_ = 0;
    bool have_length = false;
    size_t at = head.find("\r\n");
    while (at != std::string_view::npos) {
        size_t next = head.find("\r\n", at + 2);
        std::string_view line =
            head.substr(at + 2, next == std::string_view::npos ? std::string_view::npos : next - at - 2);
        auto colon = line.find(':');
        if (colon != std::string_view::npos) {
            std::string_view name = line.substr(0, colon), value = trim(line.substr(colon + 1));
            if (name.size() == 14 && iequals_prefix(name, "content-length")) {
                std::from_chars(value.data(), value.data() + value.size(), remaining_);
                have_length = true;
            } else if (name.size() == 17 && iequals_prefix(name, "transfer-encoding")) {
                chunked_ = iequals_prefix(value, "chunked");
            } else if (name.size() == 10 && iequals_prefix(name, "connection")) {
                close_after_ = iequals_prefix(value, "close");
            }
        }
        at = next;
    }
    return chunked_ || have_length;
}

void Conn::feed_sse(std::string_view data) {
    // Fast path: whole events in one piece and nothing buffered.
    if (sse_.empty()) {
        size_t start = 0;
        for (;;) {
            auto end = data.find("\n\n", start);
            if (end == std::string_view::npos) break;
            on_event(data.substr(start, end - start));
            start = end + 2;
        }
        if (start < data.size()) sse_.assign(data.substr(start));
        return;
    }
    sse_.append(data);
    size_t start = 0;
    for (;;) {
        auto end = sse_.find("\n\n", start);
        if (end == std::string::npos) break;
        on_event(std::string_view(sse_).substr(start, end - start));
        start = end + 2;
    }
    sse_.erase(0, start);
}

void Conn::on_event(std::string_view ev) {
    if (ev.substr(0, 6) != "data: ") return;
    std::string_view d = ev.substr(6);
    if (d == "[DONE]") {
        got_done_ = true;
        return;
    }
    if (d.substr(0, 9) == "{\"error\":") {
        stream_error_ = true;
        return;
    }
    for (std::string_view key : {std::string_view("\"text\":\""), std::string_view("\"content\":\"")}) {
        auto at = d.find(key);
        if (at != std::string_view::npos) {
            size_t v = at + key.size();
            if (v < d.size() && d[v] != '"') {
                lg_.on_token(sent_at_, !first_token_seen_);
                first_token_seen_ = true;
            }
            return;
        }
    }
}

void Conn::complete() {
    st_ = State::idle;
    bool ok = status_ == 200;
    const char* why = nullptr;
    uint64_t usage_tokens = 0;
    if (!ok) {
        why = "non-200 status";
    } else if (chunked_) {
        if (stream_error_) ok = false, why = "error event in stream";
        else if (!got_done_) ok = false, why = "stream ended without [DONE]";
    } else if (lg_.opt().path.find("completions") != std::string::npos) {
        auto at = body_.find("\"completion_tokens\":");
        if (at != std::string::npos) usage_tokens = std::strtoull(body_.c_str() + at + 20, nullptr, 10);
    }
    if (!ok && status_ != 200 && !body_.empty() && std::getenv("LOADGEN_DEBUG")) {
        std::fprintf(stderr, "status %d: %s\n", status_, body_.c_str());
    }
    lg_.on_response(sent_at_, ok, usage_tokens, why);
    if (lg_.stopping() || lg_.opt().hold) return;
    if (close_after_) {
        closed_ = true;
        close();
        buf_.clear();
        pos_ = 0;
        connect_again();
        return;
    }
    if (lg_.may_send()) send();
}

}  // namespace

int main(int argc, char** argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) usage(("option " + std::string(a) + " needs a value").c_str());
            return argv[++i];
        };
        if (a == "--host") o.host = val();
        else if (a == "--port" || a == "-p") o.port = static_cast<uint16_t>(std::stoi(val()));
        else if (a == "--connections" || a == "-c") o.connections = static_cast<uint32_t>(std::stoul(val()));
        else if (a == "--requests" || a == "-n") o.requests = std::stoull(val());
        else if (a == "--duration" || a == "-d") o.duration = std::stod(val());
        else if (a == "--warmup") o.warmup = std::stod(val());
        else if (a == "--method") o.method = val();
        else if (a == "--path") o.path = val();
        else if (a == "--stream") o.stream = true;
        else if (a == "--max-tokens") o.max_tokens = static_cast<uint32_t>(std::stoul(val()));
        else if (a == "--prompt") o.prompt = val();
        else if (a == "--body") o.body = val();
        else if (a == "--watch-pid") o.watch_pid = std::stoi(val());
        else if (a == "--hold") o.hold = true;
        else if (a == "--hold-kind") o.hold_kind = val();
        else if (a == "--settle") o.settle = std::stod(val());
        else if (a == "--timeout") o.timeout = std::stod(val());
        else if (a == "--connect-parallel") o.connect_parallel = static_cast<uint32_t>(std::stoul(val()));
        else if (a == "-h" || a == "--help") usage("help");
        else usage(("unknown option " + std::string(a)).c_str());
    }
    if (o.connections == 0) usage("--connections must be at least 1");
    if (o.hold_kind != "stream" && o.hold_kind != "tcp") usage("--hold-kind is stream or tcp");
    if (o.connect_parallel == 0) o.connect_parallel = 1;
    try {
        Loadgen lg(o);
        return lg.run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "dpengine-loadgen: %s\n", e.what());
        return 1;
    }
}
