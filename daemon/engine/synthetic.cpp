#include "synthetic.hpp"

#include <array>
#include <string>
#include <thread>

namespace dpengine::engine {
namespace {

constexpr uint32_t vocabulary_size = 4096;

constexpr std::array<std::string_view, 64> syllables = {
    "ba", "be", "bi", "bo", "bu", "da", "de", "di", "do", "du", "fa", "fe", "fi", "fo", "fu", "ga",
    "ge", "gi", "go", "gu", "ka", "ke", "ki", "ko", "ku", "la", "le", "li", "lo", "lu", "ma", "me",
    "mi", "mo", "mu", "na", "ne", "ni", "no", "nu", "pa", "pe", "pi", "po", "pu", "ra", "re", "ri",
    "ro", "ru", "sa", "se", "si", "so", "su", "ta", "te", "ti", "to", "tu", "va", "ve", "vi", "vo"};

// The words, built once: token t is syllables[t / 64] + syllables[t % 64].
const std::array<std::string, vocabulary_size>& words() {
    static const auto table = [] {
        std::array<std::string, vocabulary_size> t;
        for (uint32_t i = 0; i < vocabulary_size; ++i) {
            t[i] = std::string(syllables[i / 64]) + std::string(syllables[i % 64]);
        }
        return t;
    }();
    return table;
}

uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

}  // namespace

uint64_t SyntheticBackend::prompt_hash(std::string_view prompt) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : prompt) {
        h ^= c;
        h *= 0x100000001b3ULL;
    }
    return h;
}

uint32_t SyntheticBackend::token(uint64_t prompt_hash, uint64_t seed, uint32_t position) {
    return static_cast<uint32_t>(mix(prompt_hash ^ mix(seed) ^ mix(position + 1ULL)) % vocabulary_size);
}

std::string_view SyntheticBackend::word(uint32_t token) { return words()[token % vocabulary_size]; }

uint32_t SyntheticBackend::words_in(std::string_view prompt) {
    uint32_t count = 0;
    bool in_word = false;
    for (unsigned char c : prompt) {
        bool space = c == ' ' || c == '\n' || c == '\t' || c == '\r';
        if (!space && !in_word) ++count;
        in_word = !space;
    }
    return count;
}

bool SyntheticBackend::admit(Sequence& seq) {
    seq.prompt_tokens = words_in(seq.prompt);
    seq.backend_slot = prompt_hash(seq.prompt);
    return true;
}

void SyntheticBackend::step(std::span<Sequence* const> batch, std::vector<std::string>& pieces) {
    if (step_time_.count() > 0) std::this_thread::sleep_for(step_time_);
    for (size_t i = 0; i < batch.size(); ++i) {
        const Sequence& s = *batch[i];
        uint32_t t = token(s.backend_slot, s.seed, s.generated);
        pieces[i].assign(" ");
        pieces[i].append(word(t));
    }
}

void SyntheticBackend::dummy_step() {
    if (step_time_.count() > 0) std::this_thread::sleep_for(step_time_);
}

Result<std::unique_ptr<Backend>> make_backend(const wire::EngineConfig& config) {
    if (config.backend == "synthetic") {
        if (config.step_time_ms < 0 || config.step_time_ms > 3.6e6) {
            return Error{
                "engine.step_time_ms must be between 0 and 3600000, got " + std::to_string(config.step_time_ms),
                "config"};
        }
        auto step = std::chrono::nanoseconds(static_cast<int64_t>(config.step_time_ms * 1e6));
        return std::unique_ptr<Backend>(std::make_unique<SyntheticBackend>(step));
    }
    return Error{
        "engine.backend '" + config.backend + "' is not available in this build (known: synthetic, cuda, http)",
        "config"};
}

}  // namespace dpengine::engine
