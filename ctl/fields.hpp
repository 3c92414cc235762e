// One row model for dpctl's lists (ranks, nodes): each field is defined once, with its table
// column and its JSON key, and both the table and --json are rendered from the same list.
#pragma once

#include "table.hpp"

#include <boost/json.hpp>

#include <cstdio>
#include <span>
#include <string>
#include <vector>

namespace dpctl {

template <class Row>
struct Field {
    const char* header;  // the table column's title; nullptr: in --json only
    const char* key;     // the JSON key; nullptr: in the table only
    Table::Align align;
    // What --json prints (null where the daemon does not know); the table prints it as text
    // unless `cell` says otherwise. nullptr for a table-only field.
    boost::json::value (*value)(const Row&);
    // The table's cell where it is not the value as text (a unit, a colour, "-" for 0).
    Table::Cell (*cell)(const Row&) = nullptr;
};

// A JSON value as a table cell's text: text as is, numbers in decimal, null empty ("-").
inline std::string cell_text(const boost::json::value& v) {
    if (const auto* s = v.if_string()) return std::string(s->data(), s->size());
    if (v.is_null()) return "";
    return boost::json::serialize(v);
}

template <class Row>
boost::json::array json_array(std::span<const Field<Row>> fields, const std::vector<Row>& rows) {
    boost::json::array out;
    out.reserve(rows.size());
    for (const Row& row : rows) {
        boost::json::object object;
        for (const auto& f : fields) {
            if (f.key) object.emplace(f.key, f.value(row));
        }
        out.push_back(std::move(object));
    }
    return out;
}

// The table, then (with the legend) "N <noun>s listed.".
template <class Row>
void print_list(std::span<const Field<Row>> fields, const std::vector<Row>& rows, const char* noun, bool legend,
                bool colour) {
    std::vector<Table::Column> columns;
    for (const auto& f : fields) {
        if (f.header) columns.push_back({f.header, f.align});
    }
    Table table(std::move(columns));
    for (const Row& row : rows) {
        std::vector<Table::Cell> cells;
        for (const auto& f : fields) {
            if (f.header) cells.push_back(f.cell ? f.cell(row) : Table::Cell{cell_text(f.value(row))});
        }
        table.add_row(std::move(cells));
    }
    table.print(stdout, legend, colour);
    if (legend) std::printf("\n%zu %s%s listed.\n", rows.size(), noun, rows.size() == 1 ? "" : "s");
}

}  // namespace dpctl
