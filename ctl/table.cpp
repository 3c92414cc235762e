#include "table.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <ctime>

namespace dpctl {

namespace {

// Terminal columns of UTF-8 text: one per code point (enough for names, states and messages).
size_t display_width(std::string_view text) {
    return static_cast<size_t>(
        std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

}  // namespace

bool use_colour() {
    if (!isatty(STDOUT_FILENO)) return false;
    if (const char* no = std::getenv("NO_COLOR"); no && *no) return false;
    const char* term = std::getenv("TERM");
    return !(term && std::strcmp(term, "dumb") == 0);
}

std::string printable(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        auto u = static_cast<unsigned char>(c);
        if (u == '\n') {
            out += "\\n";
        } else if (u == '\t') {
            out += "\\t";
        } else if (u < 0x20 || u == 0x7F) {
            static const char hex[] = "0123456789abcdef";
            out += "\\x";
            out += hex[u >> 4];
            out += hex[u & 0xF];
        } else {
            out += c;
        }
    }
    return out;
}

std::string utc_time(uint64_t unix_seconds) {
    if (unix_seconds == 0) return "";
    std::time_t t = static_cast<std::time_t>(unix_seconds);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[40];
    std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S UTC", &tm);
    return buf;
}

const char* state_colour(std::string_view state) {
    if (state == "ready") return colour::green;
    if (state == "failed") return colour::red;
    if (state == "unhealthy" || state == "draining" || state == "stopped") return colour::yellow;
    return colour::none;
}

void Table::add_row(std::vector<Cell> cells) {
    cells.resize(columns_.size());
    for (auto& cell : cells) cell.text = cell.text.empty() ? "-" : printable(cell.text);
    rows_.push_back(std::move(cells));
}

void Table::print(std::FILE* out, bool header, bool colour) const {
    std::vector<size_t> width(columns_.size(), 0);
    for (size_t c = 0; c < columns_.size(); ++c) {
        if (header) width[c] = display_width(columns_[c].title);
        for (const auto& row : rows_) width[c] = std::max(width[c], display_width(row[c].text));
    }
    auto line = [&](auto&& text_of, auto&& colour_of) {
        std::string s;
        for (size_t c = 0; c < columns_.size(); ++c) {
            const std::string& text = text_of(c);
            const bool last = c + 1 == columns_.size();
            size_t pad = width[c] - display_width(text);
            if (c > 0) s += ' ';
            if (columns_[c].align == Align::right) s.append(pad, ' ');
            const char* col = colour ? colour_of(c) : colour::none;
            if (col) s += col;
            s += text;
            if (col) s += colour::reset;
            if (columns_[c].align == Align::left && !last) s.append(pad, ' ');
        }
        while (!s.empty() && s.back() == ' ') s.pop_back();
        s += '\n';
        std::fputs(s.c_str(), out);
    };
    if (header) {
        line([&](size_t c) -> const std::string& { return columns_[c].title; }, [](size_t) { return colour::bold; });
    }
    for (const auto& row : rows_) {
        line([&](size_t c) -> const std::string& { return row[c].text; }, [&](size_t c) { return row[c].colour; });
    }
}

}  // namespace dpctl
