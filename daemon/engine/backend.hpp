// The interface between the rank's continuous-batching step loop (the native engine's) and the
// thing that computes tokens. The step loop owns scheduling, stop conditions and output; a
// backend only admits sequences (counting their prompt tokens) and computes one next token per
// running sequence per step. Two implement it: the synthetic backend (synthetic.hpp), built into
// the rank program, and the cuda backend (daemon/cuda), which the rank loads as a module only
// when CONFIG names it (engine.cpp). The http backend (http_backend.hpp) has no step loop: it
// is an Engine of its own, forwarding to a server.
#pragma once

#include "core/error.hpp"
#include "core/wire.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dpengine::engine {

// One sequence to generate: one choice of one prompt.
struct SequenceRequest {
    uint64_t id = 0;
    std::string prompt;
    uint32_t max_tokens = 0;
    double temperature = 1.0;
    double top_p = 1.0;
    uint64_t seed = 0;
    std::vector<std::string> stop;
};

// A sequence in the step loop: the request and its progress.
struct Sequence : SequenceRequest {
    uint32_t prompt_tokens = 0;
    uint64_t backend_slot = 0;  // the backend's own per-sequence value (cache slot, hash, ...)
    uint32_t generated = 0;     // tokens produced so far
    std::string text;           // text produced so far
    size_t sent = 0;            // bytes of `text` already sent to the head
    bool finished = false;
};

class Backend {
public:
    virtual ~Backend() = default;
    // Shown in READY and status, e.g. "cpu (synthetic)" or the GPU's name.
    virtual std::string device() const = 0;
    // A sequence enters the running batch: count its prompt tokens into seq.prompt_tokens and
    // take what it needs (cache space). Returns false when there is no room for it now.
    virtual bool admit(Sequence& seq) = 0;
    // The tokens of a prompt, as admit() will count them, so that a prompt too long for
    // max_model_len is refused before it is queued; nothing when the backend counts them only
    // on admission (the step loop then ends such a sequence at once with "length").
    virtual std::optional<uint32_t> count_prompt_tokens(std::string_view) const { return std::nullopt; }
    // The sequence finished or was aborted: give back what admit() took.
    virtual void release(Sequence& seq) = 0;
    // One decoding step for the whole batch: appends one token's text to pieces[i] for
    // batch[i]. Called with a non-empty batch.
    virtual void step(std::span<Sequence* const> batch, std::vector<std::string>& pieces) = 0;
    // Lockstep mode: a step on a dummy batch, for a rank with no work while others have some,
    // so that the model's collectives see every rank. Produces nothing.
    virtual void dummy_step() {}
    // Bytes of device memory the backend holds now (weights, cache, workspace), for status.
    // Called after every step, so it must be cheap (a figure the backend keeps, not a driver
    // query per call). 0: not measured, as for CPU backends.
    virtual uint64_t memory_used() const { return 0; }
};

// Creates the backend built into the rank program that CONFIG names (the synthetic one; the
// cuda module has a make_backend of its own, engine/cuda_module.hpp); errors name the backend
// and the setting at fault.
Result<std::unique_ptr<Backend>> make_backend(const wire::EngineConfig& config);

}  // namespace dpengine::engine
