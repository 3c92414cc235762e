#include "native_engine.hpp"

#include <chrono>

namespace dpengine::engine {
namespace {

int64_t unix_now() {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

}  // namespace

NativeEngine::NativeEngine(std::unique_ptr<Backend> backend, const wire::EngineConfig& config)
    : loop_(std::move(backend), config.max_batch, config.max_model_len),
      limits_{.backend = config.backend,
              .model = config.model,
              .default_max_tokens = config.default_max_tokens,
              .max_model_len = config.max_model_len} {}

void NativeEngine::add(const wire::Request& request) {
    // An id still in use would mix two requests' sequences; the newer request wins.
    abort(request.id);
    auto parsed = openai::parse_request(request.path, request.body, limits_);
    if (const auto* error = std::get_if<openai::HttpError>(&parsed)) {
        ready_.push_back(wire::Output{.id = request.id,
                                      .status = static_cast<uint32_t>(error->status),
                                      .content_type = "application/json",
                                      .data = openai::error_body(*error),
                                      .done = true});
        return;
    }
    if (auto refused = too_long(std::get<openai::CompletionRequest>(parsed))) {
        ready_.push_back(wire::Output{.id = request.id,
                                      .status = static_cast<uint32_t>(refused->status),
                                      .content_type = "application/json",
                                      .data = openai::error_body(*refused),
                                      .done = true});
        return;
    }
    Exchange exchange;
    exchange.request = std::move(std::get<openai::CompletionRequest>(parsed));
    const openai::CompletionRequest& r = exchange.request;
    // The head's ids are unique among its requests, so the response ids are too.
    exchange.response_id =
        (r.endpoint == openai::Endpoint::chat_completions ? "chatcmpl-" : "cmpl-") + std::to_string(request.id);
    exchange.created = unix_now();
    const uint32_t count = static_cast<uint32_t>(r.prompts.size()) * r.n;
    exchange.first_sequence = next_sequence_;
    next_sequence_ += count;
    exchange.choices.resize(count);
    exchange.prompt_tokens.assign(r.prompts.size(), 0);
    exchange.unfinished = count;
    for (uint32_t p = 0; p < r.prompts.size(); ++p) {
        for (uint32_t i = 0; i < r.n; ++i) {
            SequenceRequest sequence;
            sequence.id = exchange.first_sequence + p * r.n + i;
            sequence.prompt = r.prompts[p];
            sequence.max_tokens = r.sampling.max_tokens;
            sequence.temperature = r.sampling.temperature;
            sequence.top_p = r.sampling.top_p;
            // Each choice is its own sample: without distinct seeds a deterministic backend
            // would return n copies of one answer.
            sequence.seed = r.sampling.seed.value_or(0) + i;
            sequence.stop = r.sampling.stop;
            loop_.add(sequence);
            sequences_.emplace(sequence.id, request.id);
        }
    }
    requests_.emplace(request.id, std::move(exchange));
    ++waiting_;
}

std::optional<openai::HttpError> NativeEngine::too_long(const openai::CompletionRequest& r) const {
    const bool chat = r.endpoint == openai::Endpoint::chat_completions;
    for (size_t p = 0; p < r.prompts.size(); ++p) {
        auto tokens = loop_.count_prompt_tokens(r.prompts[p]);
        if (!tokens || *tokens < limits_.max_model_len) continue;
        // As vLLM says it: the context length, the prompt's tokens, and what to change.
        std::string which = chat ? "the messages" : r.prompts.size() > 1 ? "prompt " + std::to_string(p) : "the prompt";
        return openai::HttpError{
            .message = "this model's maximum context length is " + std::to_string(limits_.max_model_len) +
                " tokens (engine.max_model_len), prompt and completion together; " + which + " has " +
                std::to_string(*tokens) + " tokens, which leaves no room for a completion. Shorten it.",
            .param = chat ? "messages" : "prompt",
            .code = "context-length-exceeded"};
    }
    return std::nullopt;
}

void NativeEngine::forget(uint64_t id, Exchange& exchange) {
    for (uint32_t k = 0; k < exchange.choices.size(); ++k) {
        if (!exchange.choices[k].finish.empty()) continue;  // its sequence has left the loop
        loop_.abort(exchange.first_sequence + k);
        sequences_.erase(exchange.first_sequence + k);
    }
    if (!exchange.admitted) --waiting_;
    requests_.erase(id);
}

void NativeEngine::abort(uint64_t id) {
    std::erase_if(ready_, [id](const wire::Output& piece) { return piece.id == id; });
    if (auto it = requests_.find(id); it != requests_.end()) forget(id, it->second);
}

void NativeEngine::abort_all() {
    loop_.abort_all();
    requests_.clear();
    sequences_.clear();
    ready_.clear();
    waiting_ = 0;
}

void NativeEngine::step(wire::Outputs& out) {
    tokens_.items.clear();
    loop_.step(tokens_);
    deliver(tokens_, out);
}

wire::Output& NativeEngine::piece_for(uint64_t id, Exchange& exchange, wire::Outputs& out) {
    if (exchange.piece == no_piece) {
        exchange.piece = out.items.size();
        wire::Output& piece = out.items.emplace_back();
        piece.id = id;
        if (!exchange.header_sent) {
            piece.status = 200;
            piece.content_type = exchange.request.stream ? "text/event-stream" : "application/json";
            exchange.header_sent = true;
        }
        touched_.push_back(id);
    }
    return out.items[exchange.piece];
}

void NativeEngine::on_tokens(TokenOutput& token, wire::Outputs& out) {
    auto sequence = sequences_.find(token.id);
    if (sequence == sequences_.end()) return;  // aborted between the step and this delivery
    const uint64_t id = sequence->second;
    Exchange& exchange = requests_.at(id);
    const auto k = static_cast<uint32_t>(token.id - exchange.first_sequence);
    Choice& choice = exchange.choices[k];
    if (!exchange.admitted) {
        exchange.admitted = true;
        --waiting_;
    }
    exchange.prompt_tokens[k / exchange.request.n] = token.prompt_tokens;
    choice.tokens += token.new_tokens;
    const bool finished = !token.finish.empty();
    if (exchange.request.stream) {
        exchange.unreported_tokens += token.new_tokens;
        if (!token.text.empty() || finished) {
            wire::Output& piece = piece_for(id, exchange, out);
            piece.data += openai::stream_chunk(exchange.request, exchange.response_id, exchange.created, k, token.text,
                                               token.finish, !choice.started);
            piece.tokens += exchange.unreported_tokens;
            exchange.unreported_tokens = 0;
            choice.started = true;
        }
    } else {
        choice.text += token.text;
    }
    if (finished) {
        choice.finish = std::move(token.finish);
        sequences_.erase(sequence);
        if (--exchange.unfinished == 0) piece_for(id, exchange, out);  // completed by deliver()
    }
}

void NativeEngine::complete(Exchange& exchange, wire::Output& piece) {
    const openai::CompletionRequest& r = exchange.request;
    openai::Usage usage;
    for (uint32_t tokens : exchange.prompt_tokens) usage.prompt_tokens += tokens;
    for (const Choice& choice : exchange.choices) usage.completion_tokens += choice.tokens;
    piece.done = true;
    if (r.stream) {
        if (r.include_usage) piece.data += openai::stream_usage_chunk(r, exchange.response_id, exchange.created, usage);
        piece.data += openai::stream_done;
        return;
    }
    std::vector<openai::Choice> choices;
    choices.reserve(exchange.choices.size());
    for (Choice& choice : exchange.choices) choices.push_back({std::move(choice.text), choice.finish});
    piece.data = openai::completion_response(r, exchange.response_id, exchange.created, choices, usage);
    piece.tokens = static_cast<uint32_t>(usage.completion_tokens);
}

void NativeEngine::deliver(TokenOutputs& tokens, wire::Outputs& out) {
    for (wire::Output& piece : ready_) out.items.push_back(std::move(piece));
    ready_.clear();
    for (TokenOutput& token : tokens.items) on_tokens(token, out);
    for (uint64_t id : touched_) {
        Exchange& exchange = requests_.at(id);
        if (exchange.unfinished == 0) {
            complete(exchange, out.items[exchange.piece]);
            forget(id, exchange);
        } else {
            exchange.piece = no_piece;
        }
    }
    touched_.clear();
    out.running = running();
    out.waiting = waiting();
}

}  // namespace dpengine::engine
