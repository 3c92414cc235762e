// The synthetic backend: deterministic tokens from (prompt, seed, position) and a fixed time
// per step, so the whole system can be tested and measured without a GPU or a model.
//
// The function is part of the documented behaviour (dpengined.toml(5)) so that tests and
// other implementations can predict the output:
//   h      = FNV-1a-64(prompt bytes)
//   token  = mix(h ^ mix(seed) ^ mix(position + 1)) mod 4096, mix = splitmix64's finaliser
//   text   = " " + word(token), word = syllables[token / 64] + syllables[token % 64]
// Prompt tokens are the whitespace-separated words of the prompt.
#pragma once

#include "backend.hpp"

#include <chrono>

namespace dpengine::engine {

class SyntheticBackend final : public Backend {
public:
    explicit SyntheticBackend(std::chrono::nanoseconds step_time) : step_time_(step_time) {}
    std::string device() const override { return "cpu (synthetic)"; }
    bool admit(Sequence& seq) override;
    std::optional<uint32_t> count_prompt_tokens(std::string_view prompt) const override { return words_in(prompt); }
    void release(Sequence&) override {}
    void step(std::span<Sequence* const> batch, std::vector<std::string>& pieces) override;
    // Takes a step's time, like a forward pass on a dummy batch.
    void dummy_step() override;

    static uint64_t prompt_hash(std::string_view prompt);
    // The prompt's tokens: its whitespace-separated words.
    static uint32_t words_in(std::string_view prompt);
    static uint32_t token(uint64_t prompt_hash, uint64_t seed, uint32_t position);
    static std::string_view word(uint32_t token);

private:
    std::chrono::nanoseconds step_time_;
};

}  // namespace dpengine::engine
