// The DP group: the collective group across ranks that keeps them in step in lockstep mode.
// The rank program knows only this interface; the library behind it (gloo here) lives in its
// own module that only dpengine-rank links, so the daemon never loads it.
#pragma once

#include "core/error.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace dpengine::engine {

// The head's rendezvous store as the rank reaches it: GROUP_KV / GROUP_VALUE over the rank's
// authenticated connection, one key space per group epoch. No port is opened for bootstrap.
class RendezvousChannel {
public:
    virtual ~RendezvousChannel() = default;
    virtual Status set(const std::string& key, const std::string& value) = 0;
    // Waits until the key is there. Fails at the deadline, or when the head starts a newer
    // group formation meanwhile (code "superseded").
    virtual Result<std::string> get(const std::string& key, std::chrono::steady_clock::time_point deadline) = 0;
};

struct GroupSpec {
    std::string kind;    // "gloo"
    uint64_t epoch = 0;  // the head's group epoch: keys of other epochs are never seen
    uint32_t index = 0;  // this rank's place in the group
    uint32_t size = 0;
    std::string bind_address;                 // the address the group's TCP connections use on this node
    std::chrono::milliseconds timeout{1500};  // rendezvous and every collective
    // Groups up to this size all-reduce through member 0 (2(n-1) messages a step, member 0
    // handling n-1 of them); larger ones use the library's all-reduce (2 log n hops).
    uint32_t star_limit = 32;
};

class DpGroup {
public:
    virtual ~DpGroup() = default;
    // Sums `value` over every member. Fails (never hangs past the timeout) when a member
    // died, stalled or left.
    virtual Result<int64_t> all_reduce_sum(int64_t value) = 0;
};

// Forms a group: rendezvous through the channel, then connects to every other member.
using GroupFactory = std::function<Result<std::unique_ptr<DpGroup>>(const GroupSpec&, RendezvousChannel&)>;

}  // namespace dpengine::engine
