// Output like systemd's tools: aligned tables with a header, "-" for empty cells, colour only
// on a terminal; and the escaping of text that came from elsewhere (the daemon, remote ranks)
// before it reaches a terminal.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace dpctl {

namespace colour {
inline constexpr const char* none = nullptr;
inline constexpr const char* green = "\x1b[0;32m";
inline constexpr const char* yellow = "\x1b[0;33m";
inline constexpr const char* red = "\x1b[0;1;31m";
inline constexpr const char* bold = "\x1b[0;1m";
inline constexpr const char* reset = "\x1b[0m";
}  // namespace colour

// Colour when standard output is a terminal, unless $NO_COLOR is set or $TERM is "dumb".
bool use_colour();

// Control characters (and DEL) as \n, \t, \xNN; everything else as is.
std::string printable(std::string_view text);

// Unix seconds as "2026-11-27 07:55:07 UTC"; "" for 0 (never).
std::string utc_time(uint64_t unix_seconds);

// The colour of a rank state: ready green, failed red, draining/stopped yellow.
const char* state_colour(std::string_view state);

class Table {
public:
    enum class Align { left, right };
    struct Column {
        std::string title;
        Align align = Align::left;
    };
    struct Cell {
        std::string text;  // printed through printable(); empty prints "-"
        const char* colour = colour::none;
    };

    explicit Table(std::vector<Column> columns) : columns_(std::move(columns)) {}
    void add_row(std::vector<Cell> cells);
    size_t rows() const { return rows_.size(); }
    // One space between columns; the last column is not padded.
    void print(std::FILE* out, bool header, bool colour) const;

private:
    std::vector<Column> columns_;
    std::vector<std::vector<Cell>> rows_;
};

}  // namespace dpctl
