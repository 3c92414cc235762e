// One node of the cluster as status reports it (org.dpengine1 ListNodes, dpctl nodes): on the
// head every registered node and the head itself; on a headless node itself and its head link.
#pragma once

#include <cstdint>
#include <string>

namespace dpengine {

struct NodeInfo {
    std::string name;
    std::string role;  // "head" or "headless"
    // The head itself: "local". A headless node as the head sees it: "connected" or "lost".
    // The head as a headless node sees it: "connected" or "disconnected".
    std::string state;
    std::string address;  // where the peer is (the head's view) or the head's endpoint
    uint32_t start_rank = 0;
    uint32_t count = 0;   // ranks held now (0: none)
    uint32_t wanted = 0;  // ranks the node asked for
    uint64_t since = 0;   // when state last changed, in seconds since the Unix epoch
    uint64_t incarnation = 0;
};

// "A-B", "A" or "none": a block of ranks, for messages. In 64 bits: a block a peer asked for
// may end past the last 32-bit rank, and its message must say so rather than wrap.
inline std::string describe_block(uint32_t start, uint32_t count) {
    if (count == 0) return "none";
    if (count == 1) return std::to_string(start);
    return std::to_string(start) + "-" + std::to_string(uint64_t{start} + count - 1);
}

}  // namespace dpengine
