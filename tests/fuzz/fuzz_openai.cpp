// HTTP request bodies of /v1/completions and /v1/chat/completions: the JSON parsing and
// validation, then the responses rendered from what was accepted. The first byte picks the
// endpoint; the rest is the body.
#include "head/openai.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    using namespace dpengine::openai;
    if (size == 0) return 0;
    Endpoint endpoint = data[0] & 1 ? Endpoint::chat_completions : Endpoint::completions;
    std::string_view body(reinterpret_cast<const char*>(data + 1), size - 1);
    Limits limits{"synthetic", 16, 8192, 16};
    auto parsed = parse_request(endpoint, body, limits);
    if (auto* error = std::get_if<HttpError>(&parsed)) {
        if (error->status < 400 || error->status > 599 || error->message.empty()) __builtin_trap();
        (void)error_body(*error);
        return 0;
    }
    const auto& request = std::get<CompletionRequest>(parsed);
    if (request.n < 1 || request.n > limits.max_choices || request.sampling.max_tokens > limits.max_model_len ||
        request.sampling.stop.size() > 4)
        __builtin_trap();
    std::vector<Choice> choices(request.n, Choice{request.prompt.substr(0, 64), "length"});
    (void)completion_response(request, "cmpl-fuzz", 0, choices, Usage{1, 1});
    (void)stream_chunk(request, "cmpl-fuzz", 0, 0, request.prompt.substr(0, 16), "", true);
    if (request.include_usage) (void)stream_usage_chunk(request, "cmpl-fuzz", 0, Usage{1, 1});
    return 0;
}
