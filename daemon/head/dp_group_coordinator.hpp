// The head's side of the DP group (lockstep mode): the group's rendezvous store (GROUP_KV /
// GROUP_VALUE), its formation and re-formation (GROUP_FORM, bumping the epoch) when the set of
// serving ranks changes or a member reports it failed, and waves (START_WAVE). RankLink owns
// one and reaches it through on_group_message and the membership calls; the coordinator
// reaches the ranks only through the Peers it is given. Runs on the daemon's event loop.
//
// Each rendezvous key has one owner among the members, named by the key (group_key_owner):
// the head stores a key only from its owner, so no member can publish another's address or
// the NCCL unique id. A member that has not published every key it owes within
// data_parallel.group_timeout of the formation stalls every other member's rendezvous; one
// that has stalled every formation, at least two, for longer than an honest member can be
// held up is named and failed (Peers::fail), and the group forms again without it. An honest
// member can be held up that long: it may be waiting out the old group's collective (up to
// group_timeout) or connecting to a stopped peer until the head declares that one lost
// (handshake.heartbeat_timeout) and kills it.
#pragma once

#include "core/config.hpp"
#include "core/reason.hpp"
#include "core/wire.hpp"
#include "head/rank_info.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace dpengine {

class DpGroupCoordinator {
public:
    // What the coordinator needs of the rank registry.
    struct Peers {
        // Sends to the rank's connection; does nothing (false) while it has none.
        std::function<bool(uint32_t rank, const wire::Message& message)> send;
        // The ranks that serve requests (ready or draining) and are connected, in rank order.
        std::function<std::vector<uint32_t>()> serving_ranks;
        // The registry's epoch, and a new one (a new group is a new placement).
        std::function<uint64_t()> epoch;
        std::function<uint64_t()> bump_epoch;
        // The rank's status figures, where the coordinator records the group it formed.
        std::function<RankInfo*(uint32_t rank)> info;
        // Takes the rank out of service (it is restarted as a failed rank is): it stalled the
        // group's formation. `reason` says why; `code` is the reason code.
        std::function<void(uint32_t rank, const std::string& reason, ReasonCode code)> fail;
    };

    DpGroupCoordinator(boost::asio::io_context& io, const Config& config, Peers peers);

    bool lockstep() const { return config_.data_parallel.dp_sync == "lockstep"; }
    // CONFIG's group fields (sync mode, interval, timeout; the kind and rendezvous in lockstep).
    void fill_group_config(wire::Config& reply) const;
    // A message from a registered rank (`info` is its status). True when it was a DP group
    // message (handled).
    bool on_group_message(RankInfo& info, const wire::Message& message);
    // Re-forms the group after `delay` (changes that come together make one new epoch); with
    // `force` even when the members stay the same.
    void schedule_regroup(bool force, std::chrono::milliseconds delay);
    void regroup(bool force);
    // Front-end: a request is about to go to a rank; wakes every rank if the group is paused.
    void wake_group();
    void broadcast_wave(uint64_t wave);
    // The head stops: no further formations.
    void shutdown();

    const std::vector<uint32_t>& members() const { return group_members_; }
    uint64_t wave_started() const { return wave_started_; }
    bool paused() const { return group_paused_; }

private:
    // Judges this epoch's formation, once, at its deadline (or when a new one starts after
    // it): members that owe keys have stalled it; a second stall in a row fails the member.
    void check_formation();
    // The keys the member at `index` owes this epoch's rendezvous and has not published.
    std::vector<std::string> missing_keys(uint32_t index) const;

    const Config& config_;
    Peers peers_;
    boost::asio::steady_timer regroup_timer_;
    boost::asio::steady_timer formation_timer_;  // this epoch's formation deadline
    std::chrono::steady_clock::time_point formation_deadline_{};
    bool formation_judged_ = true;
    std::chrono::steady_clock::time_point formation_started_{};
    struct Stall {
        uint32_t formations = 0;                      // formations in a row the member stalled
        std::chrono::steady_clock::time_point since;  // when the first of them started
    };
    std::map<uint32_t, Stall> stalls_;  // by rank
    bool shutting_down_ = false;
    bool regroup_scheduled_ = false;
    bool regroup_forced_ = false;
    std::vector<uint32_t> group_members_;
    std::string group_kind_;                              // this epoch's: "gloo" or "nccl"
    std::map<std::string, std::string> group_kv_;         // this epoch's rendezvous store
    std::multimap<std::string, uint32_t> group_waiters_;  // look-ups waiting for their key
    std::set<uint32_t> refused_setters_;                  // ranks logged this epoch for keys they do not own
    uint64_t wave_started_ = 0;                           // the newest wave START_WAVE announced (or a formation began)
    bool group_paused_ = false;                           // the group reported the end of a wave, none started since
    uint64_t paused_wave_ = 0;                            // the wave to start when it wakes
};

// The member index (place in the group, not the rank) that owns a rendezvous key of a group of
// `size` of this kind, or nothing for a key the protocol does not define: gloo's "pair-I-J"
// (I's address for its connection with J) is member I's, NCCL's "nccl-unique-id" member 0's.
std::optional<uint32_t> group_key_owner(const std::string& kind, const std::string& key, uint32_t size);

}  // namespace dpengine
