// Unit tests for the continuous-batching step loop (daemon/engine/step_loop.hpp) driven by the
// synthetic backend (daemon/engine/synthetic.hpp) and by small scripted backends.
#include "engine/step_loop.hpp"
#include "engine/synthetic.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

using namespace dpengine;
using namespace dpengine::engine;

namespace {

// ---- helpers ----

SequenceRequest request(uint64_t id, std::string prompt, uint32_t max_tokens, uint64_t seed = 0,
                        std::vector<std::string> stop = {}) {
    SequenceRequest a;
    a.id = id;
    a.prompt = std::move(prompt);
    a.max_tokens = max_tokens;
    a.seed = seed;
    a.stop = std::move(stop);
    return a;
}

// The synthetic text for the first `n` tokens of (prompt, seed), from the backend's own
// documented functions.
std::string expected_text(const std::string& prompt, uint64_t seed, uint32_t n) {
    std::string text;
    uint64_t h = SyntheticBackend::prompt_hash(prompt);
    for (uint32_t pos = 0; pos < n; ++pos) {
        text += " ";
        text += SyntheticBackend::word(SyntheticBackend::token(h, seed, pos));
    }
    return text;
}

// Wraps a backend and counts admit/release so tests can check nothing leaks.
class CountingBackend final : public Backend {
public:
    explicit CountingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}
    std::string device() const override { return inner_->device(); }
    bool admit(Sequence& seq) override {
        bool ok = inner_->admit(seq);
        if (ok) held.insert(seq.id), ++admits;
        return ok;
    }
    void release(Sequence& seq) override {
        ++releases;
        if (held.erase(seq.id) != 1) double_release = true;
        inner_->release(seq);
    }
    void step(std::span<Sequence* const> batch, std::vector<std::string>& pieces) override {
        max_batch_seen = std::max(max_batch_seen, batch.size());
        inner_->step(batch, pieces);
    }
    std::set<uint64_t> held;
    int admits = 0;
    int releases = 0;
    bool double_release = false;
    size_t max_batch_seen = 0;

private:
    std::unique_ptr<Backend> inner_;
};

// A step loop over the synthetic backend, with counters.
struct Harness {
    CountingBackend* backend = nullptr;
    std::unique_ptr<StepLoop> loop;

    explicit Harness(uint32_t max_batch, uint32_t max_model_len = 100000,
                     std::unique_ptr<Backend> inner = std::make_unique<SyntheticBackend>(std::chrono::nanoseconds(0))) {
        auto counting = std::make_unique<CountingBackend>(std::move(inner));
        backend = counting.get();
        loop = std::make_unique<StepLoop>(std::move(counting), max_batch, max_model_len);
    }

    TokenOutputs step() {
        TokenOutputs out;
        loop->step(out);
        return out;
    }
};

// Everything one request produced over a run.
struct RunResult {
    std::string text;
    uint32_t tokens = 0;
    std::string finish;
    uint32_t prompt_tokens = 0;
    int outputs = 0;
    int finished_at_step = -1;
    std::vector<std::string> chunks;
};

// Steps until the loop has no work (bounded), collecting per-request results and checking the
// invariants every step must keep.
std::map<uint64_t, RunResult> run(Harness& h, int max_steps = 10000) {
    std::map<uint64_t, RunResult> results;
    for (int step = 0; h.loop->has_work(); ++step) {
        REQUIRE(step < max_steps);
        TokenOutputs out = h.step();
        CHECK(h.loop->running() <= h.loop->capacity());
        std::set<uint64_t> seen;
        for (const auto& o : out.items) {
            INFO("request " << o.id << " at step " << step);
            CHECK(seen.insert(o.id).second);  // at most one output per request per step
            RunResult& r = results[o.id];
            CHECK(r.finish.empty());  // nothing after the finish
            r.text += o.text;
            r.tokens += o.new_tokens;
            r.finish = o.finish;
            r.prompt_tokens = o.prompt_tokens;
            r.chunks.push_back(o.text);
            ++r.outputs;
            if (!o.finish.empty()) r.finished_at_step = step;
        }
    }
    // Every admitted sequence was given back exactly once.
    CHECK(h.backend->held.empty());
    CHECK(h.backend->admits == h.backend->releases);
    CHECK_FALSE(h.backend->double_release);
    return results;
}

RunResult run_one(const SequenceRequest& add, uint32_t max_model_len = 100000) {
    Harness h(4, max_model_len);
    h.loop->add(add);
    auto results = run(h);
    REQUIRE(results.size() == 1);
    REQUIRE(results.count(add.id) == 1);
    return results[add.id];
}

// True when `s` is a sequence of complete UTF-8 characters.
bool complete_utf8(const std::string& s) {
    size_t i = 0;
    while (i < s.size()) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (size_t k = 1; k < n; ++k) {
            if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
        }
        i += n;
    }
    return true;
}

// A backend whose tokens are given per prompt: the prompt "p" produces script["p"][0],
// script["p"][1], ... and then "." forever. Prompt tokens are counted like the synthetic one.
class ScriptedBackend final : public Backend {
public:
    explicit ScriptedBackend(std::map<std::string, std::vector<std::string>> script) : script_(std::move(script)) {}
    std::string device() const override { return "scripted"; }
    bool admit(Sequence& seq) override {
        seq.prompt_tokens = 0;
        return true;
    }
    void release(Sequence&) override {}
    void step(std::span<Sequence* const> batch, std::vector<std::string>& pieces) override {
        for (size_t i = 0; i < batch.size(); ++i) {
            const auto& tokens = script_.at(batch[i]->prompt);
            pieces[i] = batch[i]->generated < tokens.size() ? tokens[batch[i]->generated] : ".";
        }
    }

private:
    std::map<std::string, std::vector<std::string>> script_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// The synthetic backend's documented function
// ---------------------------------------------------------------------------------------------

TEST_CASE("synthetic: the token function is the documented one", "[synthetic]") {
    // FNV-1a-64 test vectors.
    CHECK(SyntheticBackend::prompt_hash("") == 0xcbf29ce484222325ULL);
    CHECK(SyntheticBackend::prompt_hash("a") == 0xaf63dc4c8601ec8cULL);
    CHECK(SyntheticBackend::prompt_hash("foobar") == 0x85944171f73967e8ULL);

    // splitmix64's finaliser, written out independently.
    auto mix = [](uint64_t z) {
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    };
    for (uint64_t h : {0ULL, 1ULL, 0xcbf29ce484222325ULL, 0xdeadbeefcafef00dULL}) {
        for (uint64_t seed : {0ULL, 1ULL, 12345ULL, ~0ULL}) {
            for (uint32_t pos : {0u, 1u, 2u, 1000u, 0xffffffffu}) {
                uint32_t want = static_cast<uint32_t>(mix(h ^ mix(seed) ^ mix(pos + 1ULL)) % 4096);
                CHECK(SyntheticBackend::token(h, seed, pos) == want);
            }
        }
    }
    // word = syllables[t / 64] + syllables[t % 64]
    CHECK(SyntheticBackend::word(0) == "baba");
    CHECK(SyntheticBackend::word(1) == "babe");
    CHECK(SyntheticBackend::word(64) == "beba");
    CHECK(SyntheticBackend::word(64 * 3 + 5) == "boda");
    CHECK(SyntheticBackend::word(4095) == "vovo");
    std::set<std::string> words;
    for (uint32_t t = 0; t < 4096; ++t) {
        auto w = SyntheticBackend::word(t);
        CHECK(w.size() == 4);
        words.insert(std::string(w));
    }
    CHECK(words.size() == 4096);  // every token has its own word
}

TEST_CASE("synthetic: make_backend knows 'synthetic' and refuses others", "[synthetic]") {
    wire::EngineConfig config;
    config.backend = "synthetic";
    config.step_time_ms = 0;
    auto ok = make_backend(config);
    REQUIRE(ok.ok());
    CHECK((*ok)->device() == "cpu (synthetic)");

    config.step_time_ms = -1;
    auto negative = make_backend(config);
    REQUIRE_FALSE(negative.ok());
    CHECK_THAT(negative.error().message, Catch::Contains("step_time_ms"));

    config.backend = "cuda-nonexistent";
    config.step_time_ms = 0;
    auto unknown = make_backend(config);
    REQUIRE_FALSE(unknown.ok());
    CHECK_THAT(unknown.error().message, Catch::Contains("cuda-nonexistent"));
}

// ---------------------------------------------------------------------------------------------
// Outputs: determinism, length, prompt tokens
// ---------------------------------------------------------------------------------------------

TEST_CASE("step loop: output is the synthetic text for (prompt, seed, position)", "[step_loop]") {
    auto r = run_one(request(1, "The quick brown fox", 12, 99));
    CHECK(r.text == expected_text("The quick brown fox", 99, 12));
    CHECK(r.tokens == 12);
    CHECK(r.finish == "length");
    CHECK(r.prompt_tokens == 4);
    CHECK(r.outputs == 12);  // one output per step, each with one new token

    // Same inputs, a fresh loop: the same text.
    CHECK(run_one(request(5, "The quick brown fox", 12, 99)).text == r.text);
    // Another seed or prompt: other text.
    CHECK(run_one(request(1, "The quick brown fox", 12, 100)).text != r.text);
    CHECK(run_one(request(1, "The quick brown fax", 12, 99)).text != r.text);
}

TEST_CASE("step loop: output does not depend on what else is in the batch", "[step_loop]") {
    Harness h(3);
    for (uint64_t id = 1; id <= 7; ++id) {
        h.loop->add(request(id, "prompt number " + std::to_string(id % 3), 3 + static_cast<uint32_t>(id), id % 2));
    }
    auto results = run(h);
    REQUIRE(results.size() == 7);
    for (uint64_t id = 1; id <= 7; ++id) {
        INFO("request " << id);
        const auto& r = results[id];
        CHECK(r.text ==
              expected_text("prompt number " + std::to_string(id % 3), id % 2, 3 + static_cast<uint32_t>(id)));
        CHECK(r.tokens == 3 + id);
        CHECK(r.finish == "length");
        CHECK(r.prompt_tokens == 3);
    }
}

TEST_CASE("step loop: a request finishes with 'length' after exactly max_tokens", "[step_loop]") {
    for (uint32_t max_tokens : {1u, 2u, 5u, 64u}) {
        INFO("max_tokens " << max_tokens);
        Harness h(2);
        h.loop->add(request(9, "hello", max_tokens, 3));
        auto results = run(h);
        const auto& r = results[9];
        CHECK(r.tokens == max_tokens);
        CHECK(r.finish == "length");
        CHECK(r.finished_at_step == static_cast<int>(max_tokens) - 1);
        CHECK(r.text == expected_text("hello", 3, max_tokens));
        CHECK(h.loop->steps() == max_tokens);
        CHECK_FALSE(h.loop->has_work());
        // Once done, a step produces nothing and takes no step.
        auto out = h.step();
        CHECK(out.items.empty());
        CHECK(h.loop->steps() == max_tokens);
    }
}

TEST_CASE("step loop: prompt tokens are the whitespace-separated words", "[step_loop]") {
    struct Case {
        std::string prompt;
        uint32_t tokens;
    };
    const std::vector<Case> cases = {
        {"", 0},
        {"one", 1},
        {"two words", 2},
        {"  leading and trailing  ", 3},
        {"many    spaces   between", 3},
        {"tab\tnew\nline\r\ncrlf", 4},
        {"\n\t \r", 0},
        {"punctuation, counts: as-part-of words!", 4},
        {"\xc3\xa9t\xc3\xa9 \xe6\x97\xa5\xe6\x9c\xac", 2},
    };
    for (const auto& c : cases) {
        INFO("prompt '" << c.prompt << "'");
        auto r = run_one(request(1, c.prompt, 2));
        CHECK(r.prompt_tokens == c.tokens);
        CHECK(r.tokens == 2);
    }
}

// ---------------------------------------------------------------------------------------------
// Continuous batching
// ---------------------------------------------------------------------------------------------

TEST_CASE("step loop: max_batch bounds the running batch; waiting requests join as others finish", "[step_loop]") {
    Harness h(2);
    // Request i wants 2*i tokens: 1 finishes first, then 2, ...
    for (uint64_t id = 1; id <= 5; ++id)
        h.loop->add(request(id, "p" + std::to_string(id), 2 * static_cast<uint32_t>(id)));
    CHECK(h.loop->waiting() == 5);
    CHECK(h.loop->running() == 0);
    CHECK(h.loop->has_work());

    std::map<uint64_t, int> first_step, last_step;
    std::map<uint64_t, std::string> text;
    for (int step = 0; h.loop->has_work(); ++step) {
        REQUIRE(step < 100);
        auto out = h.step();
        CHECK(out.items.size() <= 2);
        CHECK(h.loop->running() <= 2);
        for (const auto& o : out.items) {
            if (!first_step.count(o.id)) first_step[o.id] = step;
            last_step[o.id] = step;
            text[o.id] += o.text;
        }
        if (step == 0) {
            CHECK(h.loop->running() == 2);
            CHECK(h.loop->waiting() == 3);
            REQUIRE(out.items.size() == 2);
            CHECK(out.items[0].id == 1);
            CHECK(out.items[1].id == 2);
        }
    }
    CHECK(h.backend->max_batch_seen == 2);
    // Request 1 runs steps 0-1; 3 joins at step 2 in its place. Request 2 runs steps 0-3; 4
    // joins at step 4. Request 3 (6 tokens) runs 2-7; 5 joins at step 8. Request 4 (8 tokens)
    // runs 4-11 and 5 (10 tokens) runs 8-17.
    CHECK(first_step == std::map<uint64_t, int>{{1, 0}, {2, 0}, {3, 2}, {4, 4}, {5, 8}});
    CHECK(last_step == std::map<uint64_t, int>{{1, 1}, {2, 3}, {3, 7}, {4, 11}, {5, 17}});
    CHECK(h.loop->steps() == 18);
    for (uint64_t id = 1; id <= 5; ++id) {
        CHECK(text[id] == expected_text("p" + std::to_string(id), 0, 2 * static_cast<uint32_t>(id)));
    }
    CHECK(h.backend->admits == 5);
    CHECK(h.backend->releases == 5);
}

TEST_CASE("step loop: requests start in arrival order", "[step_loop]") {
    Harness h(1);
    for (uint64_t id : {30, 10, 20}) h.loop->add(request(id, "x", 1));
    std::vector<uint64_t> order;
    while (h.loop->has_work()) {
        auto out = h.step();
        for (const auto& o : out.items) order.push_back(o.id);
    }
    CHECK(order == std::vector<uint64_t>{30, 10, 20});
}

TEST_CASE("step loop: max_batch 0 behaves as 1", "[step_loop]") {
    Harness h(0);
    h.loop->add(request(1, "a", 2));
    h.loop->add(request(2, "b", 2));
    auto out = h.step();
    CHECK(out.items.size() == 1);
    CHECK(h.loop->running() == 1);
    auto results = run(h);
    CHECK(results[2].tokens == 2);
}

TEST_CASE("step loop: a backend that has no room keeps requests waiting", "[step_loop]") {
    // A synthetic backend with room for one sequence at a time, in a loop allowing four.
    class OneAtATime final : public Backend {
    public:
        SyntheticBackend inner{std::chrono::nanoseconds(0)};
        bool busy = false;
        std::string device() const override { return "one"; }
        bool admit(Sequence& seq) override {
            if (busy) return false;
            busy = true;
            return inner.admit(seq);
        }
        void release(Sequence&) override { busy = false; }
        void step(std::span<Sequence* const> batch, std::vector<std::string>& pieces) override {
            REQUIRE(batch.size() == 1);
            inner.step(batch, pieces);
        }
    };
    Harness h(4, 100000, std::make_unique<OneAtATime>());
    h.loop->add(request(1, "a", 3));
    h.loop->add(request(2, "b", 3));
    h.loop->add(request(3, "c", 3));
    h.step();
    CHECK(h.loop->running() == 1);
    CHECK(h.loop->waiting() == 2);
    auto results = run(h);
    CHECK(results[2].text == expected_text("b", 0, 3));
    CHECK(results[3].text == expected_text("c", 0, 3));
    CHECK(h.loop->steps() == 9);
}

// ---------------------------------------------------------------------------------------------
// Stop strings
// ---------------------------------------------------------------------------------------------

TEST_CASE("step loop: a stop string ends the request with 'stop' and is cut from the text", "[step_loop]") {
    const std::string prompt = "tell me a story";
    const uint64_t seed = 7;
    const std::string full = expected_text(prompt, seed, 40);

    SECTION("a whole word in the middle") {
        std::string stop = full.substr(5 * 6, 5);  // token 6, with its leading space
        size_t at = full.find(stop);
        auto r = run_one(request(1, prompt, 40, seed, {stop}));
        CHECK(r.finish == "stop");
        CHECK(r.text == full.substr(0, at));
        CHECK(r.tokens == (at + stop.size() + 4) / 5);  // tokens generated until the stop was seen
    }
    SECTION("a stop string spanning two tokens") {
        std::string stop = full.substr(5 * 3 + 3, 4);  // "xy" + " " + "z": end of token 3, start of 4
        size_t at = full.find(stop);
        INFO("text '" << full << "', stop '" << stop << "' first at " << at);
        REQUIRE(at / 5 != (at + stop.size() - 1) / 5);  // the first occurrence does span two tokens
        auto r = run_one(request(1, prompt, 40, seed, {stop}));
        CHECK(r.finish == "stop");
        CHECK(r.text == full.substr(0, at));
        CHECK(r.tokens == (at + stop.size() + 4) / 5);
    }
    SECTION("a stop string spanning three tokens") {
        std::string stop = full.substr(5 * 10 + 2, 10);
        size_t at = full.find(stop);
        auto r = run_one(request(1, prompt, 40, seed, {stop}));
        CHECK(r.finish == "stop");
        CHECK(r.text == full.substr(0, at));
        CHECK(r.tokens == (at + stop.size() + 4) / 5);
    }
    SECTION("a stop string in the very first token") {
        std::string stop = full.substr(0, 5);
        auto r = run_one(request(1, prompt, 40, seed, {stop}));
        CHECK(r.finish == "stop");
        CHECK(r.text.empty());
        CHECK(r.tokens == 1);
    }
    SECTION("the earliest of several stop strings wins") {
        std::string late = full.substr(5 * 20, 5);
        std::string early = full.substr(5 * 8 + 1, 6);
        size_t at = std::min(full.find(late), full.find(early));
        auto r = run_one(request(1, prompt, 40, seed, {late, early}));
        CHECK(r.finish == "stop");
        CHECK(r.text == full.substr(0, at));
    }
    SECTION("of two stop strings completed by the same token, the one that starts first wins") {
        // A starts inside token k; B starts in token k-1; both end inside token k.
        bool tried = false;
        for (size_t k = 2; k < 40 && !tried; ++k) {
            std::string a = full.substr(5 * k + 2, 3);
            std::string b = full.substr(5 * k - 2, 6);
            size_t at_a = full.find(a), at_b = full.find(b);
            if (at_a != 5 * k + 2 || at_b != 5 * k - 2) continue;  // want first occurrences here
            tried = true;
            INFO("token " << k << ": A '" << a << "', B '" << b << "'");
            for (const auto& stops : {std::vector<std::string>{a, b}, std::vector<std::string>{b, a}}) {
                auto r = run_one(request(1, prompt, 40, seed, stops));
                CHECK(r.finish == "stop");
                CHECK(r.text == full.substr(0, at_b));
                CHECK(r.tokens == k + 1);
            }
        }
        CHECK(tried);
    }
    SECTION("a stop string that never occurs, and an empty one, change nothing") {
        auto r = run_one(request(1, prompt, 40, seed, {"never-generated", ""}));
        CHECK(r.finish == "length");
        CHECK(r.text == full);
        CHECK(r.tokens == 40);
    }
    SECTION("a stop string completed by the last allowed token is 'stop'") {
        std::string stop = full.substr(5 * 4 + 2, 5);
        size_t at = full.find(stop);
        uint32_t needed = static_cast<uint32_t>((at + stop.size() + 4) / 5);
        auto r = run_one(request(1, prompt, needed, seed, {stop}));
        CHECK(r.finish == "stop");
        CHECK(r.text == full.substr(0, at));
        CHECK(r.tokens == needed);
    }
}

TEST_CASE("step loop: emitted text never contains any part of a stop string (hold-back)", "[step_loop]") {
    // Many prompts, stop strings cut from the generated text at every offset: what is sent
    // while the request runs must always be a prefix of the final text, and nothing beyond the
    // stop string's length minus one may be held back.
    int spanning = 0;
    for (int p = 0; p < 12; ++p) {
        const std::string prompt = "prompt " + std::to_string(p);
        const uint64_t seed = static_cast<uint64_t>(p) * 31;
        const std::string full = expected_text(prompt, seed, 30);
        for (size_t offset = 1; offset < 60; offset += 3) {
            for (size_t len : {2, 3, 6, 9}) {
                const std::string stop = full.substr(offset, len);
                const size_t at = full.find(stop);
                const std::string final_text = full.substr(0, at);
                if (at / 5 != (at + len - 1) / 5) ++spanning;
                INFO("prompt '" << prompt << "' stop '" << stop << "' at " << at);

                Harness h(1);
                h.loop->add(request(1, prompt, 30, seed, {stop}));
                std::string sent;
                uint32_t tokens = 0;
                std::string finish;
                while (h.loop->has_work()) {
                    auto out = h.step();
                    REQUIRE(out.items.size() == 1);
                    sent += out.items[0].text;
                    tokens += out.items[0].new_tokens;
                    finish = out.items[0].finish;
                    // Nothing sent may have to be taken back.
                    REQUIRE(final_text.compare(0, sent.size(), sent) == 0);
                    REQUIRE(sent.size() <= final_text.size());
                    if (finish.empty()) {
                        // ...and no more than len-1 bytes are held back.
                        CHECK(sent.size() + (len - 1) >= 5 * tokens);
                    }
                }
                CHECK(finish == "stop");
                CHECK(sent == final_text);
                CHECK(sent.find(stop) == std::string::npos);
            }
        }
    }
    CHECK(spanning > 50);  // the sweep did exercise stop strings across token boundaries
}

TEST_CASE("step loop: held-back text is sent when the request ends by length", "[step_loop]") {
    const std::string full = expected_text("abc", 1, 6);
    auto r = run_one(request(1, "abc", 6, 1, {"a stop string that is long and never matches"}));
    CHECK(r.finish == "length");
    CHECK(r.text == full);
    // While running, everything was held back (the stop is longer than the text).
    for (size_t i = 0; i + 1 < r.chunks.size(); ++i) CHECK(r.chunks[i].empty());
    CHECK(r.chunks.back() == full);
}

TEST_CASE("step loop: UTF-8 stop strings", "[step_loop]") {
    SECTION("with synthetic (ASCII) text a UTF-8 stop never matches and all text arrives") {
        for (const std::string stop : {"\xc3\xa9", "\xe6\x97\xa5\xe6\x9c\xac", "\xf0\x9f\x98\x80"}) {
            auto r = run_one(request(1, "hi", 10, 2, {stop}));
            CHECK(r.finish == "length");
            CHECK(r.text == expected_text("hi", 2, 10));
        }
    }
    SECTION("a UTF-8 stop string spanning tokens, and chunks that never split a character") {
        // 日本語 over three tokens; stop "本語" spans the 2nd and 3rd.
        Harness h(1, 100000,
                  std::make_unique<ScriptedBackend>(std::map<std::string, std::vector<std::string>>{
                      {"p", {"\xc3\xa9t\xc3\xa9 ", "\xe6\x97\xa5\xe6\x9c", "\xac\xe8\xaa\x9e", "x"}}}));
        h.loop->add(request(1, "p", 10, 0, {"\xe6\x9c\xac\xe8\xaa\x9e"}));
        auto results = run(h);
        const auto& r = results[1];
        CHECK(r.finish == "stop");
        CHECK(r.text == "\xc3\xa9t\xc3\xa9 \xe6\x97\xa5");
        CHECK(r.tokens == 3);
        for (const auto& chunk : r.chunks) {
            INFO("chunk of " << chunk.size() << " bytes");
            CHECK(complete_utf8(chunk));
        }
    }
    SECTION("hold-back never splits a multi-byte character") {
        // Text made of 3- and 4-byte characters, a 2-byte stop that never matches: each chunk
        // sent while running must be whole characters.
        std::vector<std::string> tokens;
        for (int i = 0; i < 20; ++i) tokens.push_back(i % 2 ? "\xe6\x97\xa5" : "\xf0\x9f\x98\x80\xe6\x9c\xac");
        Harness h(1, 100000,
                  std::make_unique<ScriptedBackend>(std::map<std::string, std::vector<std::string>>{{"p", tokens}}));
        h.loop->add(request(1, "p", 20, 0, {"\xc3\xa9"}));
        auto results = run(h);
        const auto& r = results[1];
        CHECK(r.finish == "length");
        std::string all;
        for (const auto& t : tokens) all += t;
        CHECK(r.text == all);
        int non_empty = 0;
        for (size_t i = 0; i + 1 < r.chunks.size(); ++i) {
            INFO("chunk " << i);
            CHECK(complete_utf8(r.chunks[i]));
            if (!r.chunks[i].empty()) ++non_empty;
        }
        CHECK(non_empty > 10);  // text did flow while the request ran
    }
    SECTION("tokens that split a character still form whole characters in every chunk") {
        // One byte per token: é = C3 A9, 日 = E6 97 A5.
        std::vector<std::string> tokens = {"a", "\xc3", "\xa9", "\xe6", "\x97", "\xa5", "b", "c"};
        Harness h(1, 100000,
                  std::make_unique<ScriptedBackend>(std::map<std::string, std::vector<std::string>>{{"p", tokens}}));
        h.loop->add(request(1, "p", 8, 0, {"zz"}));
        auto results = run(h);
        const auto& r = results[1];
        CHECK(r.text ==
              "a\xc3\xa9\xe6\x97\xa5"
              "bc");
        for (size_t i = 0; i < r.chunks.size(); ++i) {
            INFO("chunk " << i);
            CHECK(complete_utf8(r.chunks[i]));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Abort
// ---------------------------------------------------------------------------------------------

TEST_CASE("step loop: abort of a running request stops its output and frees its slot", "[step_loop]") {
    Harness h(2);
    h.loop->add(request(1, "a", 10));
    h.loop->add(request(2, "b", 10));
    h.loop->add(request(3, "c", 4));
    h.step();
    h.step();
    CHECK(h.loop->running() == 2);
    CHECK(h.loop->waiting() == 1);
    h.loop->abort(1);
    CHECK(h.loop->running() == 1);
    CHECK(h.backend->held.count(1) == 0);  // released
    auto out = h.step();
    std::set<uint64_t> ids;
    std::string text3;
    for (const auto& o : out.items) {
        ids.insert(o.id);
        if (o.id == 3) text3 += o.text;
    }
    CHECK(ids == std::set<uint64_t>{2, 3});  // 3 took the freed slot at once
    auto results = run(h);
    CHECK(results.count(1) == 0);  // nothing more for the aborted request
    CHECK(results[2].finish == "length");
    CHECK(text3 + results[3].text == expected_text("c", 0, 4));
    CHECK(results[3].finish == "length");
}

TEST_CASE("step loop: abort of a waiting request means it never runs", "[step_loop]") {
    Harness h(1);
    h.loop->add(request(1, "a", 3));
    h.loop->add(request(2, "b", 3));
    h.loop->add(request(3, "c", 3));
    h.step();
    h.loop->abort(2);
    CHECK(h.loop->waiting() == 1);
    auto results = run(h);
    CHECK(results.count(2) == 0);
    CHECK(results[3].tokens == 3);
    CHECK(h.backend->admits == 2);
}

TEST_CASE("step loop: abort of an unknown or finished id changes nothing", "[step_loop]") {
    Harness h(2);
    h.loop->add(request(1, "a", 1));
    h.loop->add(request(2, "b", 5));
    h.step();  // 1 finishes
    h.loop->abort(1);
    h.loop->abort(12345);
    CHECK(h.loop->running() == 1);
    auto results = run(h);
    CHECK(results[2].tokens == 4);
    CHECK(results[2].finish == "length");
}

TEST_CASE("step loop: abort before the first step", "[step_loop]") {
    Harness h(2);
    h.loop->add(request(1, "a", 3));
    h.loop->abort(1);
    CHECK_FALSE(h.loop->has_work());
    auto out = h.step();
    CHECK(out.items.empty());
    CHECK(h.loop->steps() == 0);
    CHECK(h.backend->admits == 0);
}

TEST_CASE("step loop: abort_all forgets running and waiting requests", "[step_loop]") {
    Harness h(2);
    for (uint64_t id = 1; id <= 5; ++id) h.loop->add(request(id, "x", 10));
    h.step();
    CHECK(h.loop->running() == 2);
    CHECK(h.loop->waiting() == 3);
    h.loop->abort_all();
    CHECK(h.loop->running() == 0);
    CHECK(h.loop->waiting() == 0);
    CHECK_FALSE(h.loop->has_work());
    CHECK(h.backend->held.empty());
    CHECK(h.backend->releases == 2);
    uint64_t steps = h.loop->steps();
    auto out = h.step();
    CHECK(out.items.empty());
    CHECK(h.loop->running() == 0);
    CHECK(h.loop->waiting() == 0);
    CHECK(h.loop->steps() == steps);

    // The loop keeps working afterwards.
    h.loop->add(request(9, "again", 2));
    auto results = run(h);
    CHECK(results[9].text == expected_text("again", 0, 2));
}

// ---------------------------------------------------------------------------------------------
// max_model_len
// ---------------------------------------------------------------------------------------------

TEST_CASE("step loop: a prompt at or over max_model_len finishes with 'length' and no tokens", "[step_loop]") {
    for (uint32_t max_model_len : {3u, 5u}) {
        INFO("max_model_len " << max_model_len);
        Harness h(2, max_model_len);
        h.loop->add(request(1, "one two three four five", 10));  // 5 prompt tokens
        h.loop->add(request(2, "short", 3));
        auto out = h.step();
        bool found = false;
        for (const auto& o : out.items) {
            if (o.id != 1) continue;
            found = true;
            CHECK(o.finish == "length");
            CHECK(o.new_tokens == 0);
            CHECK(o.text.empty());
            CHECK(o.prompt_tokens == 5);
        }
        CHECK(found);
        auto results = run(h);
        CHECK(results.count(1) == 0);  // nothing after the finish
        // "short" has 1 prompt token: it may generate min(max_tokens, max_model_len - 1)
        // tokens, one of them in the step already taken.
        CHECK(results[2].tokens + 1 == std::min(3u, max_model_len - 1));
    }
}

TEST_CASE("step loop: generation stops when prompt plus generated reaches max_model_len", "[step_loop]") {
    struct Case {
        uint32_t max_model_len;
        uint32_t max_tokens;
        uint32_t expect_tokens;
    };
    // The prompt has 5 tokens.
    for (const auto& c : {Case{6, 100, 1}, Case{8, 100, 3}, Case{8, 2, 2}, Case{8, 3, 3}, Case{1000, 7, 7}}) {
        INFO("max_model_len " << c.max_model_len << ", max_tokens " << c.max_tokens);
        auto r = run_one(request(1, "one two three four five", c.max_tokens, 4), c.max_model_len);
        CHECK(r.finish == "length");
        CHECK(r.tokens == c.expect_tokens);
        CHECK(r.text == expected_text("one two three four five", 4, c.expect_tokens));
        CHECK(r.prompt_tokens == 5);
    }
}

TEST_CASE("step loop: a too-long prompt behind a full batch waits its turn, then does not block others",
          "[step_loop]") {
    Harness h(1, 4);
    h.loop->add(request(1, "a", 2));
    h.loop->add(request(2, "w1 w2 w3 w4 w5", 5));
    h.loop->add(request(3, "b", 2));
    auto results = run(h);
    CHECK(results[1].tokens == 2);
    CHECK(results[2].finish == "length");
    CHECK(results[2].tokens == 0);
    CHECK(results[3].tokens == 2);
    // 2 is finished in the same step that admits 3, so the whole run takes 4 steps.
    CHECK(results[2].finished_at_step == results[3].finished_at_step - 1);
    CHECK(h.loop->steps() == 4);
}

// ---------------------------------------------------------------------------------------------
// Regressions: both failed against the first version of step_loop.cpp (pieces were not cleared
// between steps; chunks were only kept whole while text was being held back)
// ---------------------------------------------------------------------------------------------

TEST_CASE("step loop: without stop strings, chunks still never split a UTF-8 character", "[step_loop]") {
    // One byte per token, as a byte-level tokenizer produces: é = C3 A9, 日 = E6 97 A5. The
    // engine turns each chunk into a JSON string on its own, so a split character is streamed as
    // two U+FFFD replacement characters.
    std::vector<std::string> tokens = {"a", "\xc3", "\xa9", "\xe6", "\x97", "\xa5", "b", "c"};
    for (const std::vector<std::string>& stop : {std::vector<std::string>{}, std::vector<std::string>{"z"}}) {
        INFO(stop.size() << " stop strings");
        Harness h(1, 100000,
                  std::make_unique<ScriptedBackend>(std::map<std::string, std::vector<std::string>>{{"p", tokens}}));
        h.loop->add(request(1, "p", 8, 0, stop));
        auto results = run(h);
        const auto& r = results[1];
        CHECK(r.text ==
              "a\xc3\xa9\xe6\x97\xa5"
              "bc");
        for (size_t i = 0; i < r.chunks.size(); ++i) {
            INFO("chunk " << i << " of " << r.chunks[i].size() << " bytes");
            CHECK(complete_utf8(r.chunks[i]));
        }
    }
}

TEST_CASE("step loop: a backend that appends to pieces, as backend.hpp documents, gets clean pieces", "[step_loop]") {
    // Backend::step is documented to append "one token's text to pieces[i]"; the loop must
    // then hand it empty pieces each step.
    class Appending final : public Backend {
    public:
        std::string device() const override { return "appending"; }
        bool admit(Sequence&) override { return true; }
        void release(Sequence&) override {}
        void step(std::span<Sequence* const> batch, std::vector<std::string>& pieces) override {
            for (size_t i = 0; i < batch.size(); ++i) pieces[i] += "t" + std::to_string(batch[i]->generated);
        }
    };
    Harness h(2, 100000, std::make_unique<Appending>());
    h.loop->add(request(1, "a", 3));
    h.loop->add(request(2, "b", 1));
    h.loop->add(request(3, "c", 2));
    auto results = run(h);
    CHECK(results[1].text == "t0t1t2");
    CHECK(results[2].text == "t0");
    CHECK(results[3].text == "t0t1");
}
