#include "engine/lockstep.hpp"

#include "core/log.hpp"

#include <algorithm>

namespace dpengine::engine {

Lockstep::Lockstep(Settings settings, GroupFactory factory)
    : settings_(std::move(settings)), factory_(std::move(factory)) {
    settings_.sync_interval = std::max(1u, settings_.sync_interval);
}

void Lockstep::on_group_form(const wire::GroupForm& form) {
    if (form.group_epoch <= newest_form_) return;  // stale: a newer formation was seen
    newest_form_ = form.group_epoch;
    pending_ = form;
}

void Lockstep::on_start_wave(uint64_t wave) {
    if (!start_seen_ || wave > start_requested_) start_requested_ = wave;
    start_seen_ = true;
}

bool Lockstep::wants_to_run(const StepLoop& loop) const {
    if (pending_) return true;
    if (!group_) return false;
    return running_ || (start_seen_ && start_requested_ >= wave_) || loop.has_work();
}

wire::GroupState Lockstep::snapshot() const {
    wire::GroupState s;
    s.group_epoch = epoch_;
    s.kind = kind_;
    s.state = state_;
    s.wave = wave_;
    s.steps = steps_;
    s.dummy_steps = dummy_steps_;
    s.error = error_;
    return s;
}

wire::GroupState Lockstep::report() {
    auto now = std::chrono::steady_clock::now();
    wire::GroupState s = snapshot();
    double seconds = std::chrono::duration<double>(now - reported_at_).count();
    uint64_t total = steps_ + dummy_steps_;
    s.steps_per_second = seconds > 0 ? static_cast<double>(total - reported_steps_) / seconds : 0;
    reported_steps_ = total;
    reported_at_ = now;
    return s;
}

void Lockstep::fail(Link& link, const Error& error) {
    log::warning("DP group epoch {} failed: {} [{}]; waiting for the head to re-form it", epoch_, error.message,
                 error.code);
    group_.reset();
    running_ = false;
    state_ = "failed";
    error_ = error.message;
    link.send(snapshot());
}

void Lockstep::form(Link& link) {
    wire::GroupForm form = std::move(*pending_);
    pending_.reset();
    group_.reset();  // closes the old group's connections first: members still in it fail fast
    running_ = false;
    steps_left_ = 0;
    epoch_ = form.group_epoch;
    kind_ = form.kind;
    error_.clear();
    auto me = std::find(form.members.begin(), form.members.end(), settings_.rank);
    if (me == form.members.end()) {
        state_ = "idle";  // not a member of this epoch's group: the head will include it later
        return;
    }
    index_ = static_cast<uint32_t>(me - form.members.begin());
    state_ = "forming";
    GroupSpec spec;
    spec.kind = form.kind;
    spec.epoch = form.group_epoch;
    spec.index = index_;
    spec.size = static_cast<uint32_t>(form.members.size());
    spec.bind_address = settings_.bind_address;
    spec.timeout = settings_.timeout;
    auto group = factory_(spec, link.rendezvous(form.group_epoch));
    if (!group) {
        if (group.error().reason() == Reason::superseded) return;  // a newer formation is pending
        fail(link, group.error());
        return;
    }
    group_ = std::move(group).value();
    // A new group starts in a wave, so that every member agrees on where it is.
    // A START_WAVE for a later wave may have come before this formation completed: keep it
    // (wave numbers only grow, across epochs too).
    wave_ = form.wave;
    start_requested_ = start_seen_ ? std::max(start_requested_, form.wave) : form.wave;
    start_seen_ = true;
    running_ = true;
    state_ = "running";
    log::info("joined DP group epoch {} as member {} of {} ({}, {}), wave {}", epoch_, index_, spec.size, kind_,
              settings_.bind_address, wave_);
    link.send(snapshot());
}

void Lockstep::advance(StepLoop& loop, TokenOutputs& out, Link& link) {
    if (pending_) form(link);
    if (!group_) return;
    if (!running_) {
        if (start_seen_ && start_requested_ >= wave_) {
            wave_ = start_requested_;
        } else if (loop.has_work()) {
            // Work arrived after the wave ended: ask the head to wake every rank for the next.
            link.send(wire::StartWave{wave_});
            start_requested_ = wave_;
            start_seen_ = true;
        } else {
            return;
        }
        running_ = true;
        state_ = "running";
        steps_left_ = 0;
    }
    if (steps_left_ == 0) {
        auto sum = group_->all_reduce_sum(loop.has_work() ? 1 : 0);
        if (!sum) return fail(link, sum.error());
        if (*sum == 0) {
            // Every rank saw no work at the same collective: the wave ends everywhere at once.
            running_ = false;
            state_ = "paused";
            ++wave_;
            if (index_ == 0) link.send(snapshot());
            return;
        }
        steps_left_ = settings_.sync_interval;
    }
    --steps_left_;
    if (loop.has_work()) {
        uint64_t before = loop.steps();
        loop.step(out);
        // Every request it had ended before reaching the backend (a prompt longer than
        // max_model_len): step the dummy batch, so that the backend's own collectives (the
        // cuda backend's NCCL all-reduce) still see this rank this round.
        if (loop.steps() == before) loop.dummy_step();
        ++steps_;
    } else {
        loop.dummy_step();
        ++dummy_steps_;
    }
}

}  // namespace dpengine::engine
