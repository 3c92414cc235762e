// Request bodies as a native backend's rank reads them (engine/openai.hpp): the JSON parsing,
// validation and refusals, then the responses rendered from what was accepted. The first
// byte picks the endpoint (bit 0: chat rather than completions; bit 7: instead
// /v1/embeddings or an unknown path, which must be refused whatever the body); the rest is
// the body.
#include "engine/openai.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace dpengine::openai;
    if (size == 0) return 0;
    const bool chat = data[0] & 1;
    std::string_view path = chat ? "/v1/chat/completions" : "/v1/completions";
    if (data[0] & 0x80) path = chat ? "/v1/embeddings" : "/v1/unknown";
    std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
    Limits limits;
    limits.model = "synthetic";
    auto parsed = parse_request(path, body, limits);
    if (auto* error = std::get_if<HttpError>(&parsed)) {
        if (error->status < 400 || error->status > 599 || error->message.empty()) __builtin_trap();
        (void)error_body(*error);
        return 0;
    }
    if (data[0] & 0x80) __builtin_trap();  // accepted on an endpoint the backend does not serve
    const auto& request = std::get<CompletionRequest>(parsed);
    if (request.n < 1 || request.n > limits.max_choices || request.sampling.max_tokens < 1 ||
        request.sampling.max_tokens > limits.max_model_len || request.sampling.stop.size() > 4 ||
        request.prompts.empty() || request.prompts.size() > limits.max_prompts || (chat && request.prompts.size() != 1))
        __builtin_trap();
    const std::string& prompt = request.prompts.front();
    std::vector<Choice> choices(request.prompts.size() * request.n, Choice{prompt.substr(0, 64), "length"});
    (void)completion_response(request, "cmpl-fuzz", 0, choices, Usage{1, 1});
    (void)stream_chunk(request, "cmpl-fuzz", 0, 0, prompt.substr(0, 16), "", true);
    if (request.include_usage) (void)stream_usage_chunk(request, "cmpl-fuzz", 0, Usage{1, 1});
    return 0;
}
