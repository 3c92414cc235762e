// Lockstep mode: every rank of the DP group steps while any rank has work, idle ones on a
// dummy batch, so that collective-using models (MoE / expert parallel) never wait on a rank
// that skipped a step. Every sync_interval steps the group all-reduces "how many ranks have
// work"; zero ends the wave and the ranks pause until a rank gets work again (it asks the head
// for the next wave, and the head's START_WAVE wakes every rank) or the head starts one.
#pragma once

#include "core/wire.hpp"
#include "engine/dp_group.hpp"
#include "engine/step_loop.hpp"

#include <chrono>
#include <memory>
#include <optional>
#include <string>

namespace dpengine::engine {

class Lockstep {
public:
    struct Settings {
        uint32_t rank = 0;
        uint32_t sync_interval = 1;
        std::chrono::milliseconds timeout{1500};
        std::string bind_address = "127.0.0.1";
    };

    // What lockstep needs from the rank's connection to the head.
    class Link {
    public:
        virtual ~Link() = default;
        virtual void send(const wire::Message& message) = 0;
        virtual RendezvousChannel& rendezvous(uint64_t group_epoch) = 0;
    };

    Lockstep(Settings settings, GroupFactory factory);

    // A newer formation replaces any pending one; it is formed by the next advance().
    void on_group_form(const wire::GroupForm& form);
    void on_start_wave(uint64_t wave);

    // Forms a pending group, then does at most one round of the lockstep loop: the collective
    // when one is due, and one step (real or dummy). A real step's tokens go to `out`
    // (NativeEngine::deliver turns them into responses).
    void advance(StepLoop& loop, TokenOutputs& out, Link& link);
    // True while a wave runs or a formation is pending: the rank should not sleep.
    bool wants_to_run(const StepLoop& loop) const;
    // The periodic report (steps per second since the previous call).
    wire::GroupState report();
    // The wave running, or the next one while paused (0 before the first formation).
    uint64_t wave() const { return wave_; }

private:
    void form(Link& link);
    void fail(Link& link, const Error& error);
    wire::GroupState snapshot() const;

    Settings settings_;
    GroupFactory factory_;
    std::unique_ptr<DpGroup> group_;
    std::optional<wire::GroupForm> pending_;
    std::string kind_ = "gloo";
    uint64_t epoch_ = 0;  // of the group formed or forming
    uint64_t newest_form_ = 0;
    uint32_t index_ = 0;
    std::string state_ = "forming";
    std::string error_;
    bool running_ = false;
    uint64_t wave_ = 0;             // the wave running, or the next one while paused
    uint64_t start_requested_ = 0;  // the highest wave START_WAVE asked for
    bool start_seen_ = false;
    uint32_t steps_left_ = 0;  // steps before the next collective
    uint64_t steps_ = 0;
    uint64_t dummy_steps_ = 0;
    uint64_t reported_steps_ = 0;
    std::chrono::steady_clock::time_point reported_at_ = std::chrono::steady_clock::now();
};

}  // namespace dpengine::engine
