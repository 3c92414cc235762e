// The engine of the native backends (synthetic, cuda): the rank answers OpenAI requests
// itself. A request body is parsed and validated (openai.hpp), expanded into one sequence per
// prompt and choice for the continuous-batching StepLoop, and the tokens each step produces
// become the response's pieces: the whole JSON response once every choice has finished, or a
// stream of server-sent events (chunks as they come, the usage chunk when asked for, [DONE]).
#pragma once

#include "engine.hpp"
#include "openai.hpp"
#include "step_loop.hpp"

#include <unordered_map>
#include <vector>

namespace dpengine::engine {

class NativeEngine final : public Engine {
public:
    NativeEngine(std::unique_ptr<Backend> backend, const wire::EngineConfig& config);

    std::string device() const override { return loop_.device(); }
    uint32_t capacity() const override { return loop_.capacity(); }
    EngineState state() override { return {}; }  // ready as soon as the backend exists

    void add(const wire::Request& request) override;
    void abort(uint64_t id) override;
    void abort_all() override;
    bool has_work() const override { return loop_.has_work() || has_ready_output(); }
    // loop().step(), then deliver().
    void step(wire::Outputs& out) override;

    // Requests: running once one of their sequences has been admitted, waiting until then.
    uint32_t running() const override { return static_cast<uint32_t>(requests_.size()) - waiting_; }
    uint32_t waiting() const override { return waiting_; }
    uint64_t steps() const override { return loop_.steps(); }
    uint64_t memory_used() const override { return loop_.memory_used(); }

    // Lockstep mode steps the loop itself (real or dummy steps, as the DP group decides) and
    // then hands the step's tokens to deliver().
    StepLoop& loop() { return loop_; }
    // Turns a step's tokens into response pieces (and sends the error responses of requests
    // refused since the last call); sets the load in requests.
    void deliver(TokenOutputs& tokens, wire::Outputs& out);
    // True while error responses wait for the next step() or deliver(): lockstep mode must
    // then deliver even while its group pauses.
    bool has_ready_output() const { return !ready_.empty(); }

private:
    // One choice of one prompt: one sequence of the loop.
    struct Choice {
        std::string text;    // non-streamed: the text so far
        std::string finish;  // empty while it runs
        uint32_t tokens = 0;
        bool started = false;  // streamed: its first chunk went out (chat's role)
    };

    struct Exchange {
        openai::CompletionRequest request;
        std::string response_id;  // "cmpl-…" or "chatcmpl-…"
        int64_t created = 0;
        uint64_t first_sequence = 0;          // choice k is sequence first_sequence + k
        std::vector<Choice> choices;          // index p * n + i
        std::vector<uint32_t> prompt_tokens;  // per prompt
        uint32_t unfinished = 0;
        uint32_t unreported_tokens = 0;  // streamed: tokens of no piece yet (text held back)
        bool admitted = false;           // one of its sequences runs (the request is no longer waiting)
        bool header_sent = false;
        size_t piece = no_piece;  // this delivery's piece in out.items
    };
    static constexpr size_t no_piece = static_cast<size_t>(-1);

    // The piece of this delivery for the request (the first one carries status and type).
    wire::Output& piece_for(uint64_t id, Exchange& exchange, wire::Outputs& out);
    void on_tokens(TokenOutput& token, wire::Outputs& out);
    // The last piece: the whole response, or the stream's end.
    void complete(Exchange& exchange, wire::Output& piece);
    void forget(uint64_t id, Exchange& exchange);
    // A 400 when a prompt leaves no room for one token within max_model_len (where the
    // backend counts prompt tokens before admission).
    std::optional<openai::HttpError> too_long(const openai::CompletionRequest& request) const;

    StepLoop loop_;
    openai::Limits limits_;
    std::unordered_map<uint64_t, Exchange> requests_;   // by the head's request id
    std::unordered_map<uint64_t, uint64_t> sequences_;  // sequence id → request id
    std::vector<wire::Output> ready_;                   // error responses, sent with the next delivery
    std::vector<uint64_t> touched_;                     // requests with a piece in this delivery
    TokenOutputs tokens_;                               // step()'s, kept for its buffers
    uint64_t next_sequence_ = 1;
    uint32_t waiting_ = 0;
};

}  // namespace dpengine::engine
