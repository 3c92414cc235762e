// The rank's continuous-batching scheduler: requests wait in arrival order, join the running
// batch as soon as there is room (up to max_batch), leave it the step they finish, and every
// step reports the text each running request gained. Backend-neutral.
#pragma once

#include "backend.hpp"
#include "engine.hpp"

#include <deque>
#include <memory>

namespace dpengine::engine {

class StepLoop final : public Engine {
public:
    StepLoop(std::unique_ptr<Backend> backend, uint32_t max_batch, uint32_t max_model_len);

    std::string device() const override { return backend_->device(); }
    uint32_t capacity() const override { return max_batch_; }
    EngineState state() override { return {}; }  // ready as soon as the backend exists

    void add(const wire::Add& request) override;
    // Forgets the request; no further output is produced for it.
    void abort(uint64_t id) override;
    // Forgets every request (the head that sent them is gone).
    void abort_all() override;
    bool has_work() const override { return !running_.empty() || !waiting_.empty(); }
    // One step of the whole batch. Appends an Output for every request that gained text or
    // finished, and sets the load figures.
    void step(wire::Outputs& out) override;
    // Lockstep mode: a step on a dummy batch while this rank has no work.
    void dummy_step() {
        backend_->dummy_step();
        ++dummy_steps_;
    }
    uint64_t dummy_steps() const { return dummy_steps_; }

    uint32_t running() const override { return static_cast<uint32_t>(running_.size()); }
    uint32_t waiting() const override { return static_cast<uint32_t>(waiting_.size()); }
    uint64_t steps() const override { return steps_; }
    uint64_t memory_used() const override { return backend_->memory_used(); }
    const Backend& backend() const { return *backend_; }

private:
    void admit_waiting(wire::Outputs& out);
    // Appends the part of seq.text that can be sent; holds back a possible stop-string prefix
    // while the request runs.
    void emit(Sequence& seq, uint32_t new_tokens, const char* finish, wire::Outputs& out);

    std::unique_ptr<Backend> backend_;
    uint32_t max_batch_;
    uint32_t max_model_len_;
    std::deque<std::unique_ptr<Sequence>> waiting_;
    std::vector<std::unique_ptr<Sequence>> running_;
    std::vector<Sequence*> batch_;
    std::vector<std::string> pieces_;
    uint64_t steps_ = 0;
    uint64_t dummy_steps_ = 0;
};

}  // namespace dpengine::engine
