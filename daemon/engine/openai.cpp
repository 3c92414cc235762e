#include "engine/openai.hpp"

#include "core/utf8.hpp"

#include <boost/json.hpp>

#include <array>
#include <charconv>
#include <cstddef>
#include <limits>
#include <utility>

namespace dpengine::openai {
namespace {

namespace json = boost::json;

constexpr std::size_t max_depth = 32;
constexpr std::size_t max_stop_sequences = 4;

// Thrown by the validators below and caught in parse_request only: validation is a deep
// chain of checks, and unwinding keeps each check a single line.
struct RequestError {
    HttpError error;
};

[[noreturn]] void fail(std::string param, std::string message) {
    throw RequestError{HttpError{.message = std::move(message), .param = std::move(param)}};
}

// A valid field the backend cannot honour: answering without it would be a different answer.
[[noreturn]] void refuse(std::string param, std::string message) {
    throw RequestError{
        HttpError{.message = std::move(message), .param = std::move(param), .code = "unsupported-parameter"}};
}

// ---- UTF-8 and JSON output helpers ---------------------------------------------------------

// Generated text can hold invalid UTF-8 (a token boundary inside a multi-byte character), and
// Boost.JSON serializes such bytes verbatim, which clients' JSON parsers reject.
std::string_view valid_utf8(std::string_view s, std::string& storage) { return utf8::repaired(s, storage); }

json::string_view to_json(std::string_view s) { return {s.data(), s.size()}; }

// A JSON string value holding `s`, repaired to valid UTF-8.
json::string json_string(std::string_view s) {
    std::string storage;
    return json::string(to_json(valid_utf8(s, storage)));
}

// Appends `s` as a quoted, escaped JSON string. Boost.JSON does the escaping, so the stream
// chunks can be spliced together without building a json::object per token.
void append_json_string(std::string& out, std::string_view s) {
    std::string storage;
    json::serializer serializer;
    serializer.reset(to_json(valid_utf8(s, storage)));
    std::array<char, 256> buffer;
    while (!serializer.done()) {
        const json::string_view part = serializer.read(buffer.data(), buffer.size());
        out.append(part.data(), part.size());
    }
}

template <typename Integer>
void append_integer(std::string& out, Integer value) {
    std::array<char, std::numeric_limits<Integer>::digits10 + 3> buffer;
    const auto result = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value);
    out.append(buffer.data(), result.ptr);
}

std::string_view chunk_object(const CompletionRequest& request) {
    return request.endpoint == Endpoint::chat_completions ? "chat.completion.chunk" : "text_completion";
}

json::object usage_object(const Usage& usage) {
    return {{"prompt_tokens", usage.prompt_tokens},
            {"completion_tokens", usage.completion_tokens},
            {"total_tokens", usage.prompt_tokens + usage.completion_tokens}};
}

json::value nullable_string(std::string_view s) {
    if (s.empty()) return nullptr;
    return json_string(s);
}

// ---- request validation --------------------------------------------------------------------

// A present field; JSON null counts as absent, as the OpenAI API treats it.
const json::value* field(const json::object& object, std::string_view name) {
    const json::value* value = object.if_contains(to_json(name));
    return value == nullptr || value->is_null() ? nullptr : value;
}

// Integers only: Boost.JSON parses anything with a fraction or exponent as a double, and
// values above INT64_MAX as uint64, which every range here excludes.
std::optional<int64_t> as_integer(const json::value& value) {
    if (value.is_int64()) return value.get_int64();
    return std::nullopt;
}

uint32_t bounded_count(const json::value& value, const std::string& name, uint32_t max) {
    const std::optional<int64_t> number = as_integer(value);
    if (!number || *number < 1 || *number > max) {
        fail(name, "'" + name + "' must be an integer between 1 and " + std::to_string(max));
    }
    return static_cast<uint32_t>(*number);
}

double number(const json::value& value, const std::string& name) {
    if (!value.is_number()) fail(name, "'" + name + "' must be a number");
    return value.to_number<double>();
}

bool boolean(const json::value& value, const std::string& name) {
    if (!value.is_bool()) fail(name, "'" + name + "' must be a boolean");
    return value.get_bool();
}

uint32_t max_tokens(Endpoint endpoint, const json::object& body, const Limits& limits) {
    // Chat's newer name wins when a client sends both.
    if (endpoint == Endpoint::chat_completions) {
        if (const json::value* value = field(body, "max_completion_tokens")) {
            return bounded_count(*value, "max_completion_tokens", limits.max_model_len);
        }
    }
    if (const json::value* value = field(body, "max_tokens")) {
        return bounded_count(*value, "max_tokens", limits.max_model_len);
    }
    return limits.default_max_tokens;
}

std::vector<std::string> stop_sequences(const json::value& value) {
    const auto sequence = [](const json::value& item) {
        if (!item.is_string()) fail("stop", "'stop' must be a string or an array of strings");
        if (item.get_string().empty()) fail("stop", "'stop' sequences must not be empty");
        return std::string(item.get_string());
    };
    if (value.is_string()) return {sequence(value)};
    if (!value.is_array()) fail("stop", "'stop' must be a string or an array of strings");
    const json::array& items = value.get_array();
    if (items.size() > max_stop_sequences) {
        fail("stop", "'stop' may hold at most " + std::to_string(max_stop_sequences) + " sequences");
    }
    std::vector<std::string> stop;
    stop.reserve(items.size());
    for (const json::value& item : items) stop.push_back(sequence(item));
    return stop;
}

SamplingParams sampling(Endpoint endpoint, const json::object& body, const Limits& limits) {
    SamplingParams params;
    params.max_tokens = max_tokens(endpoint, body, limits);
    if (const json::value* value = field(body, "temperature")) {
        params.temperature = number(*value, "temperature");
        if (!(params.temperature >= 0.0 && params.temperature <= 2.0)) {
            fail("temperature", "'temperature' must be between 0 and 2");
        }
    }
    if (const json::value* value = field(body, "top_p")) {
        params.top_p = number(*value, "top_p");
        if (!(params.top_p > 0.0 && params.top_p <= 1.0)) {
            fail("top_p", "'top_p' must be greater than 0 and at most 1");
        }
    }
    if (const json::value* value = field(body, "seed")) {
        const std::optional<int64_t> seed = as_integer(*value);
        if (!seed) fail("seed", "'seed' must be a 64-bit signed integer");
        params.seed = static_cast<uint64_t>(*seed);
    }
    if (const json::value* value = field(body, "stop")) params.stop = stop_sequences(*value);
    return params;
}

// Token ids written as decimal words: the native backends' tokens are words (SYNTHETIC
// BACKEND in dpengined.toml(5)), so id 101 is the word "101".
std::string token_id_prompt(const json::array& ids) {
    std::string prompt;
    for (std::size_t i = 0; i < ids.size(); ++i) {
        const std::optional<int64_t> token = as_integer(ids[i]);
        if (!token || *token < 0) fail("prompt", "'prompt' token ids must be non-negative integers");
        if (i != 0) prompt += ' ';
        prompt += std::to_string(*token);
    }
    return prompt;
}

// The four OpenAI prompt forms: a string, a list of strings, a list of token ids, or a list
// of lists of token ids; each list item is a prompt of its own.
std::vector<std::string> completion_prompts(const json::object& body, const Limits& limits) {
    const json::value* value = field(body, "prompt");
    if (value == nullptr) fail("prompt", "'prompt' is required");
    if (value->is_string()) return {std::string(value->get_string())};
    constexpr const char* forms =
        "'prompt' must be a string, an array of strings, an array of token ids or an array of arrays of token ids";
    if (!value->is_array()) fail("prompt", forms);
    const json::array& items = value->get_array();
    if (items.empty()) fail("prompt", "'prompt' must not be an empty array");
    if (items.front().is_number()) return {token_id_prompt(items)};
    if (items.size() > limits.max_prompts) {
        fail("prompt", "'prompt' may hold at most " + std::to_string(limits.max_prompts) + " prompts");
    }
    std::vector<std::string> prompts;
    prompts.reserve(items.size());
    for (const json::value& item : items) {
        if (item.is_string()) prompts.emplace_back(item.get_string());
        else if (item.is_array()) prompts.push_back(token_id_prompt(item.get_array()));
        else fail("prompt", forms);
    }
    return prompts;
}

bool is_chat_role(const json::string& role) {
    static constexpr std::array<std::string_view, 5> roles = {"system", "user", "assistant", "tool", "developer"};
    for (std::string_view known : roles) {
        if (role == to_json(known)) return true;
    }
    return false;
}

void append_content(std::string& prompt, const json::value* content, const std::string& where, bool is_assistant) {
    const std::string param = where + ".content";
    if (content == nullptr) {
        // Assistant turns that only made tool calls carry no content.
        if (is_assistant) return;
        fail(param, "'" + param + "' is required");
    }
    if (content->is_string()) {
        prompt += content->get_string();
        return;
    }
    if (!content->is_array()) {
        fail(param, "'" + param + "' must be a string or an array of content parts");
    }
    const json::array& parts = content->get_array();
    for (std::size_t j = 0; j < parts.size(); ++j) {
        const std::string part = param + "[" + std::to_string(j) + "]";
        if (!parts[j].is_object()) fail(part, "'" + part + "' must be an object");
        const json::object& object = parts[j].get_object();
        const json::value* type = field(object, "type");
        if (type == nullptr || !type->is_string() || type->get_string() != "text") {
            fail(part + ".type", "'" + part + ".type' must be 'text': only text content is supported");
        }
        const json::value* text = field(object, "text");
        if (text == nullptr || !text->is_string()) {
            fail(part + ".text", "'" + part + ".text' must be a string");
        }
        prompt += text->get_string();
    }
}

// Renders the conversation as "role: content\n" lines followed by "assistant:", so the
// engine continues with the assistant's turn.
std::string chat_prompt(const json::object& body) {
    const json::value* value = field(body, "messages");
    if (value == nullptr) fail("messages", "'messages' is required");
    if (!value->is_array()) fail("messages", "'messages' must be an array of message objects");
    const json::array& messages = value->get_array();
    if (messages.empty()) fail("messages", "'messages' must not be empty");

    std::string prompt;
    for (std::size_t i = 0; i < messages.size(); ++i) {
        const std::string where = "messages[" + std::to_string(i) + "]";
        if (!messages[i].is_object()) fail(where, "'" + where + "' must be an object");
        const json::object& message = messages[i].get_object();

        const json::value* role = field(message, "role");
        if (role == nullptr) fail(where + ".role", "'" + where + ".role' is required");
        if (!role->is_string() || !is_chat_role(role->get_string())) {
            fail(where + ".role", "'" + where + ".role' must be one of system, user, assistant, tool, developer");
        }
        prompt += role->get_string();
        prompt += ": ";
        append_content(prompt, field(message, "content"), where, role->get_string() == "assistant");
        prompt += '\n';
    }
    prompt += "assistant:";
    return prompt;
}

// ---- what a native backend refuses ---------------------------------------------------------

enum EndpointMask : unsigned { completions = 1, chat = 2, both = completions | chat };

unsigned mask_of(Endpoint endpoint) {
    return endpoint == Endpoint::chat_completions ? EndpointMask::chat : EndpointMask::completions;
}

bool nothing(const json::value&) { return false; }
bool is_false(const json::value& v) { return v.is_bool() && !v.get_bool(); }
bool is_zero(const json::value& v) { return v.is_number() && v.to_number<double>() == 0.0; }
bool is_one(const json::value& v) { return v.is_number() && v.to_number<double>() == 1.0; }
bool is_top_k_off(const json::value& v) {
    return v.is_number() && (v.to_number<double>() == 0.0 || v.to_number<double>() == -1.0);
}
bool is_none(const json::value& v) { return v.is_string() && v.get_string() == "none"; }
bool is_empty(const json::value& v) {
    return (v.is_string() && v.get_string().empty()) || (v.is_array() && v.get_array().empty()) ||
        (v.is_object() && v.get_object().empty());
}
bool is_text_format(const json::value& v) {
    const json::value* type = v.is_object() ? field(v.get_object(), "type") : nullptr;
    return type != nullptr && type->is_string() && type->get_string() == "text";
}

// Known OpenAI and vLLM request fields that change what a model would answer and that the
// native backends (synthetic, cuda) cannot honour: a request giving one of them any value but
// the neutral one is refused with 400 naming the field (code "unsupported-parameter") rather
// than answered as if it were absent. null counts as absent. dpengined.toml(5) lists them
// (SYNTHETIC BACKEND).
struct Unsupported {
    std::string_view field;
    unsigned endpoints;                   // EndpointMask
    bool (*neutral)(const json::value&);  // the values that change nothing
    std::string_view accepted;            // those values, for the message
};

constexpr std::array unsupported_fields = {
    // Log-probabilities: the backends compute none.
    Unsupported{"logprobs", EndpointMask::completions, nothing, "null"},
    Unsupported{"logprobs", EndpointMask::chat, is_false, "false"},
    Unsupported{"top_logprobs", both, nothing, "null"},
    Unsupported{"prompt_logprobs", both, nothing, "null"},
    // Other outputs than the sampled continuation.
    Unsupported{"echo", both, is_false, "false"},
    Unsupported{"suffix", both, is_empty, "\"\""},
    Unsupported{"best_of", both, is_one, "1"},
    Unsupported{"use_beam_search", both, is_false, "false"},
    Unsupported{"include_stop_str_in_output", both, is_false, "false"},
    // Sampling that the backends do not implement.
    Unsupported{"logit_bias", both, is_empty, "{}"},
    Unsupported{"presence_penalty", both, is_zero, "0"},
    Unsupported{"frequency_penalty", both, is_zero, "0"},
    Unsupported{"repetition_penalty", both, is_one, "1"},
    Unsupported{"top_k", both, is_top_k_off, "-1 or 0"},
    Unsupported{"min_p", both, is_zero, "0"},
    Unsupported{"min_tokens", both, is_zero, "0"},
    Unsupported{"stop_token_ids", both, is_empty, "[]"},
    Unsupported{"bad_words", both, is_empty, "[]"},
    Unsupported{"allowed_token_ids", both, is_empty, "[]"},
    Unsupported{"logits_processors", both, is_empty, "[]"},
    Unsupported{"truncate_prompt_tokens", both, nothing, "null"},
    // Structured output and tool calls.
    Unsupported{"response_format", both, is_text_format, "{\"type\":\"text\"}"},
    Unsupported{"tools", both, is_empty, "[]"},
    Unsupported{"tool_choice", both, is_none, "\"none\""},
    Unsupported{"functions", both, is_empty, "[]"},
    Unsupported{"function_call", both, is_none, "\"none\""},
    Unsupported{"guided_json", both, nothing, "null"},
    Unsupported{"guided_regex", both, nothing, "null"},
    Unsupported{"guided_choice", both, nothing, "null"},
    Unsupported{"guided_grammar", both, nothing, "null"},
    Unsupported{"structured_outputs", both, nothing, "null"},
};

void refuse_unsupported(Endpoint endpoint, const json::object& body, const Limits& limits) {
    for (const Unsupported& entry : unsupported_fields) {
        if (!(entry.endpoints & mask_of(endpoint))) continue;
        const json::value* value = field(body, entry.field);
        if (value == nullptr || entry.neutral(*value)) continue;
        const std::string name(entry.field);
        refuse(name,
               "the " + limits.backend + " backend does not support '" + name + "' (it takes only " +
                   std::string(entry.accepted) + ")");
    }
}

CompletionRequest validate(Endpoint endpoint, const json::object& body, const Limits& limits) {
    refuse_unsupported(endpoint, body, limits);
    CompletionRequest request;
    request.endpoint = endpoint;
    request.model = limits.model;
    request.prompts = endpoint == Endpoint::chat_completions ? std::vector<std::string>{chat_prompt(body)}
                                                             : completion_prompts(body, limits);
    if (const json::value* value = field(body, "n")) {
        request.n = bounded_count(*value, "n", limits.max_choices);
    }
    if (const json::value* value = field(body, "stream")) request.stream = boolean(*value, "stream");
    if (const json::value* value = field(body, "stream_options")) {
        if (!value->is_object()) fail("stream_options", "'stream_options' must be an object");
        if (!request.stream) {
            fail("stream_options", "stream_options is only allowed when stream is true");
        }
        if (const json::value* include = field(value->get_object(), "include_usage")) {
            request.include_usage = boolean(*include, "stream_options.include_usage");
        }
    }
    request.sampling = sampling(endpoint, body, limits);
    return request;
}

// The endpoint a path names, or the error response for one a native backend does not serve.
std::variant<Endpoint, HttpError> endpoint_of(std::string_view path, const Limits& limits) {
    if (path == "/v1/completions") return Endpoint::completions;
    if (path == "/v1/chat/completions") return Endpoint::chat_completions;
    if (path == "/v1/embeddings") {
        return HttpError{.message = "the " + limits.backend + " backend does not serve embeddings",
                         .code = "unsupported-endpoint"};
    }
    return HttpError{.status = 404,
                     .type = "not_found_error",
                     .message = "no such endpoint: " + std::string(path),
                     .code = "not-found"};
}

}  // namespace

std::variant<CompletionRequest, HttpError> parse_request(std::string_view path, std::string_view body,
                                                         const Limits& limits) {
    const std::variant<Endpoint, HttpError> endpoint = endpoint_of(path, limits);
    if (const auto* error = std::get_if<HttpError>(&endpoint)) return *error;
    json::parse_options options;
    options.max_depth = max_depth;  // also bounds the parser's stack on hostile input
    // The parsed tree is dropped as soon as its fields are copied out, so an arena serves it.
    json::monotonic_resource arena;
    boost::system::error_code ec;
    const json::value root = json::parse(to_json(body), ec, &arena, options);
    if (ec == json::error::too_deep) {
        return HttpError{.message = "request body nests deeper than " + std::to_string(max_depth) + " levels"};
    }
    if (ec) {
        // Boost.JSON reports bad UTF-8 inside strings as a plain syntax error; say which.
        const std::string detail = utf8::is_valid(body) ? ec.message() : "invalid UTF-8";
        return HttpError{.message = "request body is not valid JSON: " + detail};
    }
    if (!root.is_object()) return HttpError{.message = "request body must be a JSON object"};
    try {
        return validate(std::get<Endpoint>(endpoint), root.get_object(), limits);
    } catch (RequestError& e) {
        return std::move(e.error);
    }
}

std::string completion_response(const CompletionRequest& request, std::string_view id, int64_t created,
                                const std::vector<Choice>& choices, const Usage& usage) {
    const bool chat = request.endpoint == Endpoint::chat_completions;
    json::array rendered;
    rendered.reserve(choices.size());
    for (std::size_t i = 0; i < choices.size(); ++i) {
        json::object choice;
        choice["index"] = i;
        if (chat) {
            choice["message"] = {{"role", "assistant"}, {"content", json_string(choices[i].text)}};
        } else {
            choice["text"] = json_string(choices[i].text);
        }
        choice["logprobs"] = nullptr;
        choice["finish_reason"] = nullable_string(choices[i].finish_reason);
        rendered.emplace_back(std::move(choice));
    }
    const json::object response = {{"id", json_string(id)},
                                   {"object", chat ? "chat.completion" : "text_completion"},
                                   {"created", created},
                                   {"model", json_string(request.model)},
                                   {"choices", std::move(rendered)},
                                   {"usage", usage_object(usage)}};
    return json::serialize(response);
}

std::string stream_chunk(const CompletionRequest& request, std::string_view id, int64_t created, uint32_t index,
                         std::string_view delta, std::string_view finish_reason, bool first) {
    // One call per generated token per stream, so the event is spliced from literals and
    // escaped strings instead of going through a json::object. Key order matches OpenAI's.
    const bool chat = request.endpoint == Endpoint::chat_completions;
    std::string out;
    out.reserve(192 + id.size() + request.model.size() + delta.size() + finish_reason.size());
    out += "data: {\"id\":";
    append_json_string(out, id);
    out += ",\"object\":\"";
    out += chunk_object(request);
    out += "\",\"created\":";
    append_integer(out, created);
    out += ",\"model\":";
    append_json_string(out, request.model);
    out += ",\"choices\":[{\"index\":";
    append_integer(out, index);
    if (chat) {
        out += first ? ",\"delta\":{\"role\":\"assistant\",\"content\":" : ",\"delta\":{\"content\":";
        append_json_string(out, delta);
        out += '}';
    } else {
        out += ",\"text\":";
        append_json_string(out, delta);
    }
    out += ",\"logprobs\":null,\"finish_reason\":";
    if (finish_reason.empty()) {
        out += "null";
    } else {
        append_json_string(out, finish_reason);
    }
    out += "}]";
    // OpenAI announces the usage field on every chunk once usage is requested.
    if (request.include_usage) out += ",\"usage\":null";
    out += "}\n\n";
    return out;
}

std::string stream_usage_chunk(const CompletionRequest& request, std::string_view id, int64_t created,
                               const Usage& usage) {
    const json::object chunk = {{"id", json_string(id)},    {"object", to_json(chunk_object(request))},
                                {"created", created},       {"model", json_string(request.model)},
                                {"choices", json::array()}, {"usage", usage_object(usage)}};
    return "data: " + json::serialize(chunk) + "\n\n";
}

}  // namespace dpengine::openai
