// The rank's continuous-batching scheduler: requests wait in arrival order, join the running
// batch as soon as there is room (up to max_batch), leave it the step they finish, and every
// step reports the text each running sequence gained. Backend-neutral, and below the OpenAI
// formats: native_engine.hpp turns requests into sequences and their tokens into responses.
#pragma once

#include "backend.hpp"

#include <deque>
#include <memory>

namespace dpengine::engine {

// One sequence's progress in one step.
struct TokenOutput {
    uint64_t id = 0;
    std::string text;         // the text the step added (whole UTF-8 characters)
    uint32_t new_tokens = 0;  // tokens the step added
    std::string finish;       // empty while running; "stop" or "length" at the end
    uint32_t prompt_tokens = 0;
};

// A step's tokens. The load is not among them: a copy taken at the step would be stale after
// an abort; running() and waiting() are always current.
struct TokenOutputs {
    std::vector<TokenOutput> items;
};

class StepLoop {
public:
    StepLoop(std::unique_ptr<Backend> backend, uint32_t max_batch, uint32_t max_model_len);

    std::string device() const { return backend_->device(); }
    uint32_t capacity() const { return max_batch_; }
    uint32_t max_model_len() const { return max_model_len_; }

    // The prompt's tokens as the backend counts them, where it can before admission.
    std::optional<uint32_t> count_prompt_tokens(std::string_view prompt) const {
        return backend_->count_prompt_tokens(prompt);
    }
    void add(const SequenceRequest& request);
    // Forgets the sequence; no further output is produced for it.
    void abort(uint64_t id);
    // Forgets every sequence (the head that sent them is gone).
    void abort_all();
    bool has_work() const { return !running_.empty() || !waiting_.empty(); }
    // One step of the whole batch. Appends an output for every sequence that gained text or
    // finished.
    void step(TokenOutputs& out);
    // Lockstep mode: a step on a dummy batch while this rank has no work.
    void dummy_step() {
        backend_->dummy_step();
        ++dummy_steps_;
    }
    uint64_t dummy_steps() const { return dummy_steps_; }

    uint32_t running() const { return static_cast<uint32_t>(running_.size()); }
    uint32_t waiting() const { return static_cast<uint32_t>(waiting_.size()); }
    uint64_t steps() const { return steps_; }
    uint64_t memory_used() const { return backend_->memory_used(); }
    const Backend& backend() const { return *backend_; }

private:
    void admit_waiting(TokenOutputs& out);
    // Appends the part of seq.text that can be sent; holds back a possible stop-string prefix
    // while the request runs.
    void emit(Sequence& seq, uint32_t new_tokens, const char* finish, TokenOutputs& out);

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
