// The head's side of the DP group (lockstep mode): the group's rendezvous store, its
// formation and re-formation, and waves (dp_group_coordinator.hpp).
#include "dp_group_coordinator.hpp"

#include "core/log.hpp"

#include <algorithm>

namespace dpengine {

namespace {

// Bounds on what one epoch's rendezvous store holds (and on the gets waiting for a key): a gloo
// member publishes one address per peer, an NCCL group one unique id in all.
size_t max_group_keys(size_t members) { return members * members + 4; }
constexpr size_t max_value_bytes = 4096;  // a gloo pair address or an NCCL unique id, in hex

std::string join_ranks(const std::vector<uint32_t>& ranks) {
    std::string out;
    for (uint32_t r : ranks) out += (out.empty() ? "" : ",") + std::to_string(r);
    return out;
}

}  // namespace

DpGroupCoordinator::DpGroupCoordinator(boost::asio::io_context& io, const Config& config, Peers peers)
    : config_(config), peers_(std::move(peers)), regroup_timer_(io) {}

void DpGroupCoordinator::shutdown() {
    shutting_down_ = true;
    regroup_timer_.cancel();
}

void DpGroupCoordinator::fill_group_config(wire::Config& reply) const {
    reply.sync = config_.data_parallel.dp_sync;
    reply.sync_interval = config_.data_parallel.sync_interval;
    reply.group_timeout = config_.data_parallel.group_timeout;
    if (lockstep()) {
        reply.group_kind = dp_group_kind(config_);
        reply.group_rendezvous = "head";  // GROUP_KV on this connection
    }
}

bool DpGroupCoordinator::on_group_message(RankInfo& info, const wire::Message& message) {
    const uint32_t rank = info.rank;
    const uint64_t epoch = peers_.epoch();
    const bool member = std::find(group_members_.begin(), group_members_.end(), rank) != group_members_.end();
    if (auto* kv = std::get_if<wire::GroupKv>(&message)) {
        if (!member || kv->group_epoch != epoch) {
            // A rendezvous of an epoch that is over (or a rank outside the group): it will get
            // a newer GROUP_FORM; answer "not found" so that nothing waits on the head.
            if (!kv->value) peers_.send(rank, wire::GroupValue{kv->group_epoch, kv->key, false, {}});
            return true;
        }
        if (kv->value) {
            if (kv->value->size() > max_value_bytes || group_kv_.size() >= max_group_keys(group_members_.size())) {
                peers_.send(rank, wire::ErrorReply{"group-store-full", "the DP group's rendezvous store is full"});
                return true;
            }
            // First set wins: a member cannot replace what another published.
            auto [it, added] = group_kv_.emplace(kv->key, *kv->value);
            if (!added) return true;
            // Answer the members that asked before it was there.
            auto [first, last] = group_waiters_.equal_range(kv->key);
            for (auto w = first; w != last; ++w) {
                peers_.send(w->second, wire::GroupValue{epoch, kv->key, true, it->second});
            }
            group_waiters_.erase(first, last);
        } else if (auto it = group_kv_.find(kv->key); it != group_kv_.end()) {
            peers_.send(rank, wire::GroupValue{epoch, kv->key, true, it->second});
        } else if (group_waiters_.size() < max_group_keys(group_members_.size())) {
            // Held until the key is set (or the epoch ends): no polling.
            group_waiters_.emplace(kv->key, rank);
        }
        return true;
    }
    if (auto* wave = std::get_if<wire::StartWave>(&message)) {
        if (member && wave->wave > wave_started_) broadcast_wave(wave->wave);
        return true;
    }
    if (auto* state = std::get_if<wire::GroupState>(&message)) {
        // Periodic reports repeat the state: act on changes only.
        const bool repeated = info.group_epoch == state->group_epoch && info.group_state == state->state;
        // A report of an earlier epoch than the head formed since is stale (it was on its way,
        // or the rank has not formed the new group yet): status keeps the newer epoch.
        if (state->group_epoch >= info.group_epoch) {
            info.group_kind = state->kind;
            info.group_state = state->state;
            info.group_epoch = state->group_epoch;
            info.wave = state->wave;
        }
        info.lockstep_steps = state->steps;
        info.dummy_steps = state->dummy_steps;
        // steps_per_second is the head's own figure, from the heartbeats (note_activity).
        if (state->group_epoch != epoch || !member) return true;
        if (state->state == "paused" && state->wave > wave_started_) {
            group_paused_ = true;
            paused_wave_ = state->wave;
        } else if (state->state == "failed" && !repeated) {
            log::warning("rank {} reports the DP group of epoch {} failed: {}", rank, state->group_epoch, state->error);
            schedule_regroup(true, std::chrono::milliseconds(100));
        }
        return true;
    }
    if (std::holds_alternative<wire::GroupValue>(message) || std::holds_alternative<wire::GroupForm>(message)) {
        peers_.send(rank, wire::ErrorReply{"unexpected-type", std::string("a rank may not send ") + wire::type_name(message)});
        return true;
    }
    return false;
}

void DpGroupCoordinator::broadcast_wave(uint64_t wave) {
    wave_started_ = wave;
    group_paused_ = false;
    for (uint32_t r : group_members_) {
        peers_.send(r, wire::StartWave{wave});
    }
}

void DpGroupCoordinator::wake_group() {
    if (group_paused_ && paused_wave_ > wave_started_) broadcast_wave(paused_wave_);
}

void DpGroupCoordinator::schedule_regroup(bool force, std::chrono::milliseconds delay) {
    regroup_forced_ = regroup_forced_ || force;
    if (regroup_scheduled_) return;  // changes that come together make one new epoch
    regroup_scheduled_ = true;
    regroup_timer_.expires_after(delay);
    regroup_timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec) return;  // cancelled: the link may be gone, touch nothing
        regroup_scheduled_ = false;
        if (shutting_down_) return;
        bool forced = regroup_forced_;
        regroup_forced_ = false;
        regroup(forced);
    });
}

void DpGroupCoordinator::regroup(bool force) {
    // Every rank that serves requests steps in lockstep, draining ones included.
    std::vector<uint32_t> members = peers_.serving_ranks();
    if (members == group_members_ && !force) return;
    if (members.empty() && group_members_.empty()) return;
    const uint64_t epoch = peers_.bump_epoch();
    group_members_ = members;
    group_kv_.clear();
    group_waiters_.clear();
    // The new group starts running a wave of its own, so that every member agrees where it is.
    wave_started_ += 1;
    group_paused_ = false;
    wire::GroupForm form{epoch, dp_group_kind(config_), members, wave_started_};
    log::info("DP group epoch {}: {} rank(s) [{}], {}, wave {}", epoch, members.size(), join_ranks(members), form.kind,
              wave_started_);
    for (uint32_t r : members) {
        peers_.send(r, form);
        // Status shows the group the head formed; the member's GROUP_STATE confirms it.
        RankInfo* info = peers_.info(r);
        if (!info) continue;
        info->group_kind = form.kind;
        info->group_epoch = epoch;
        info->group_state = "forming";
    }
}

}  // namespace dpengine
