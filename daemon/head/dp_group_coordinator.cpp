// The head's side of the DP group (lockstep mode): the group's rendezvous store, its
// formation and re-formation, and waves (dp_group_coordinator.hpp).
#include "dp_group_coordinator.hpp"

#include "core/log.hpp"

#include <algorithm>
#include <charconv>
#include <string_view>

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

// A member index as key names write it: decimal, no sign, no leading zero.
std::optional<uint32_t> parse_index(std::string_view text) {
    uint32_t value = 0;
    if (text.empty() || (text.size() > 1 && text[0] == '0')) return std::nullopt;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
    return value;
}

std::string gloo_pair_key(uint32_t from, uint32_t to) {
    return "pair-" + std::to_string(from) + "-" + std::to_string(to);
}
constexpr std::string_view nccl_unique_id_key = "nccl-unique-id";

}  // namespace

std::optional<uint32_t> group_key_owner(const std::string& kind, const std::string& key, uint32_t size) {
    if (kind == "nccl") return key == nccl_unique_id_key && size > 0 ? std::optional<uint32_t>(0) : std::nullopt;
    constexpr std::string_view prefix = "pair-";
    if (kind != "gloo" || !key.starts_with(prefix)) return std::nullopt;
    std::string_view rest = std::string_view(key).substr(prefix.size());
    size_t dash = rest.find('-');
    if (dash == std::string_view::npos) return std::nullopt;
    auto from = parse_index(rest.substr(0, dash)), to = parse_index(rest.substr(dash + 1));
    if (!from || !to || *from >= size || *to >= size || *from == *to) return std::nullopt;
    return from;
}

DpGroupCoordinator::DpGroupCoordinator(boost::asio::io_context& io, const Config& config, Peers peers)
    : config_(config), peers_(std::move(peers)), regroup_timer_(io), formation_timer_(io) {}

void DpGroupCoordinator::shutdown() {
    shutting_down_ = true;
    regroup_timer_.cancel();
    formation_timer_.cancel();
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
    const auto place = std::find(group_members_.begin(), group_members_.end(), rank);
    const bool member = place != group_members_.end();
    if (auto* kv = std::get_if<wire::GroupKv>(&message)) {
        if (!member || kv->group_epoch != epoch) {
            // A rendezvous of an epoch that is over (or a rank outside the group): it will get
            // a newer GROUP_FORM; answer "not found" so that nothing waits on the head.
            if (!kv->value) peers_.send(rank, wire::GroupValue{kv->group_epoch, kv->key, false, {}});
            return true;
        }
        if (kv->value) {
            const auto index = static_cast<uint32_t>(place - group_members_.begin());
            const auto size = static_cast<uint32_t>(group_members_.size());
            if (auto owner = group_key_owner(group_kind_, kv->key, size); owner != index) {
                // Only the owner publishes a key: a member that set another's address (or the
                // NCCL unique id) would wire the group through itself.
                std::string owned_by = owner
                    ? "member " + std::to_string(*owner) + " (rank " + std::to_string(group_members_[*owner]) + ")"
                    : "no member (the protocol defines no such key)";
                std::string message = "the DP group's rendezvous key '" + kv->key.substr(0, 64) + "' of epoch " +
                    std::to_string(epoch) + " belongs to " + owned_by + ", not to member " + std::to_string(index) +
                    " (rank " + std::to_string(rank) + ")";
                if (refused_setters_.insert(rank).second)
                    log::warning("rank {}: {} [group-key-not-owned]", rank, message);
                peers_.send(rank, wire::ErrorReply{ReasonCode("group-key-not-owned"), message});
                return true;
            }
            if (kv->value->size() > max_value_bytes || group_kv_.size() >= max_group_keys(group_members_.size())) {
                peers_.send(
                    rank, wire::ErrorReply{ReasonCode("group-store-full"), "the DP group's rendezvous store is full"});
                return true;
            }
            // First set wins: the owner cannot change what its peers may have fetched already.
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
        peers_.send(rank,
                    wire::ErrorReply{ReasonCode("unexpected-type"),
                                     std::string("a rank may not send ") + wire::type_name(message)});
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
    // The formation that ends now is judged first when its deadline passed (its timer may not
    // have run yet): a member failed for stalling it is not in the next one.
    if (!formation_judged_ && std::chrono::steady_clock::now() >= formation_deadline_) check_formation();
    // Every rank that serves requests steps in lockstep, draining ones included.
    std::vector<uint32_t> members = peers_.serving_ranks();
    if (members == group_members_ && !force) return;
    if (members.empty() && group_members_.empty()) return;
    const uint64_t epoch = peers_.bump_epoch();
    group_members_ = members;
    group_kind_ = dp_group_kind(config_);
    group_kv_.clear();
    group_waiters_.clear();
    refused_setters_.clear();
    // The new group starts running a wave of its own, so that every member agrees where it is.
    wave_started_ += 1;
    group_paused_ = false;
    wire::GroupForm form{epoch, group_kind_, members, wave_started_};
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
    // Every member publishes its keys as soon as GROUP_FORM arrives and then waits up to
    // group_timeout for its peers': past that deadline a member that still owes keys holds
    // up all the others, and re-forming with it would fail the same way forever.
    formation_timer_.cancel();
    formation_judged_ = members.size() < 2;  // a group of one meets nobody
    if (formation_judged_) return;
    formation_started_ = std::chrono::steady_clock::now();
    formation_deadline_ = formation_started_ +
        std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                              std::chrono::duration<double>(config_.data_parallel.group_timeout));
    formation_timer_.expires_at(formation_deadline_);
    formation_timer_.async_wait([this, epoch](const boost::system::error_code& ec) {
        if (!ec && epoch == peers_.epoch()) check_formation();
    });
}

std::vector<std::string> DpGroupCoordinator::missing_keys(uint32_t index) const {
    std::vector<std::string> owed;
    const auto size = static_cast<uint32_t>(group_members_.size());
    if (size < 2) return owed;  // a group of one meets nobody
    if (group_kind_ == "nccl") {
        if (index == 0) owed.emplace_back(nccl_unique_id_key);
    } else {
        for (uint32_t peer = 0; peer < size; ++peer) {
            if (peer != index) owed.push_back(gloo_pair_key(index, peer));
        }
    }
    std::erase_if(owed, [this](const std::string& key) { return group_kv_.contains(key); });
    return owed;
}

void DpGroupCoordinator::check_formation() {
    if (formation_judged_ || shutting_down_) return;
    formation_judged_ = true;
    const uint64_t epoch = peers_.epoch();
    // How long an honest member can be held up (see the header).
    const double tolerated = config_.handshake.heartbeat_timeout + 2 * config_.data_parallel.group_timeout;
    std::erase_if(stalls_, [this](const auto& entry) {
        return std::find(group_members_.begin(), group_members_.end(), entry.first) == group_members_.end();
    });
    std::vector<std::pair<uint32_t, std::string>> stalled;
    for (uint32_t index = 0; index < group_members_.size(); ++index) {
        const uint32_t rank = group_members_[index];
        auto missing = missing_keys(index);
        if (missing.empty()) {
            stalls_.erase(rank);
            continue;
        }
        std::string keys;
        for (size_t k = 0; k < missing.size() && k < 4; ++k) keys += (k ? ", '" : "'") + missing[k] + "'";
        if (missing.size() > 4) keys += " and " + std::to_string(missing.size() - 4) + " more";
        Stall& stall = stalls_[rank];
        if (stall.formations++ == 0) stall.since = formation_started_;
        const double stalled_for =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - stall.since).count();
        if (stall.formations < 2 || stalled_for < tolerated) {
            log::notice(
                "rank {} has not published its DP group rendezvous key(s) {} of epoch {} within "
                "data_parallel.group_timeout ({} s); formation {} in a row it holds up, for {:.1f} s; it is "
                "failed past {:.1f} s",
                rank, keys, epoch, config_.data_parallel.group_timeout, stall.formations, stalled_for, tolerated);
            continue;
        }
        const uint32_t formations = stall.formations;
        stalls_.erase(rank);  // `stall` is gone from here on
        stalled.emplace_back(rank,
                             fmt::format("stalled the DP group's formation (epoch {}, member {} of {}): it did "
                                         "not publish its rendezvous key(s) {} within "
                                         "data_parallel.group_timeout ({} s), nor in any of the {} formation(s) "
                                         "of the last {:.1f} s; the group forms without it",
                                         epoch, index, group_members_.size(), keys, config_.data_parallel.group_timeout,
                                         formations - 1, stalled_for));
    }
    // Failing a member re-forms the group (the serving ranks change), which ends this epoch.
    for (const auto& [rank, reason] : stalled) {
        if (peers_.fail) peers_.fail(rank, reason, "group-stalled");
    }
}

}  // namespace dpengine
