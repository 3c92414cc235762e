// Unit tests for how blocks of ranks are written in messages (daemon/core/node_info.hpp).
#include "core/node_info.hpp"

#include <catch2/catch.hpp>

using namespace dpengine;

TEST_CASE("describe_block: none, one rank, a range", "[node_info]") {
    CHECK(describe_block(5, 0) == "none");
    CHECK(describe_block(0, 0) == "none");
    CHECK(describe_block(3, 1) == "3");
    CHECK(describe_block(2, 2) == "2-3");
}

TEST_CASE("describe_block: a block past the last 32-bit rank does not wrap", "[node_info]") {
    // A peer asked for start_rank 4294967295 with count 2: the message said "ranks 4294967295-0".
    CHECK(describe_block(4294967295u, 2) == "4294967295-4294967296");
    CHECK(describe_block(4294967295u, 1) == "4294967295");
    CHECK(describe_block(4000000000u, 4000000000u) == "4000000000-7999999999");
}
