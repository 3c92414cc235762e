#include <catch2/catch.hpp>

#include <boost/json.hpp>

#include "engine/openai.hpp"

#include <string>
#include <string_view>

namespace json = boost::json;
using namespace dpengine::openai;

namespace {

Limits test_limits() {
    Limits limits;
    limits.backend = "synthetic";
    limits.model = "tiny-model";
    limits.default_max_tokens = 16;
    limits.max_model_len = 100;
    limits.max_choices = 4;
    return limits;
}

std::string_view path_of(Endpoint endpoint) {
    return endpoint == Endpoint::chat_completions ? "/v1/chat/completions" : "/v1/completions";
}

CompletionRequest accept(Endpoint endpoint, std::string_view body) {
    auto result = parse_request(path_of(endpoint), body, test_limits());
    if (const auto* error = std::get_if<HttpError>(&result)) {
        FAIL("rejected " << body << ": " << error->message);
    }
    return std::get<CompletionRequest>(result);
}

HttpError reject(Endpoint endpoint, std::string_view body) {
    auto result = parse_request(path_of(endpoint), body, test_limits());
    if (std::holds_alternative<CompletionRequest>(result)) FAIL("accepted " << body);
    return std::get<HttpError>(result);
}

CompletionRequest accept_completion(const std::string& fields) {
    return accept(Endpoint::completions, R"({"prompt":"hi")" + fields + "}");
}

HttpError reject_completion(const std::string& fields) {
    return reject(Endpoint::completions, R"({"prompt":"hi")" + fields + "}");
}

void check_error(const HttpError& error, std::string_view param, std::string_view message) {
    CHECK(error.status == 400);
    CHECK(error.type == "invalid_request_error");
    CHECK(error.param == param);
    CHECK_THAT(error.message, Catch::Contains(std::string(message)));
}

// A valid field the backend cannot honour: 400 naming it, code unsupported-parameter.
void check_refused(const HttpError& error, std::string_view param) {
    check_error(error, param, "the synthetic backend does not");
    CHECK(error.code == "unsupported-parameter");
}

// Splits "data: {...}\n\n" and parses the payload, which must be valid JSON.
json::object sse_payload(const std::string& event) {
    REQUIRE(event.rfind("data: ", 0) == 0);
    REQUIRE(event.size() >= 8);
    REQUIRE(event.substr(event.size() - 2) == "\n\n");
    return json::parse(event.substr(6, event.size() - 8)).as_object();
}

std::string text(const json::value& value) { return std::string(value.as_string()); }

CompletionRequest request_for(Endpoint endpoint, bool include_usage = false) {
    CompletionRequest request;
    request.endpoint = endpoint;
    request.model = "tiny-model";
    request.stream = true;
    request.include_usage = include_usage;
    return request;
}

}  // namespace

TEST_CASE("malformed bodies are rejected", "[openai]") {
    SECTION("not JSON") {
        check_error(reject(Endpoint::completions, "not json"), "", "request body is not valid JSON: ");
        check_error(reject(Endpoint::completions, R"({"prompt":)"), "", "request body is not valid JSON: ");
        check_error(reject(Endpoint::completions, R"({"prompt":"a"} x)"), "", "request body is not valid JSON: ");
        check_error(reject(Endpoint::completions, ""), "", "request body is not valid JSON: ");
    }
    SECTION("not an object") {
        for (std::string_view body : {"[1]", "\"prompt\"", "3", "null", "true"}) {
            check_error(reject(Endpoint::completions, body), "", "request body must be a JSON object");
        }
    }
    SECTION("nesting beyond 32 levels, without blowing the stack") {
        const std::string brackets(10000, '[');
        check_error(reject(Endpoint::completions, brackets), "", "request body nests deeper than 32 levels");
        const std::string objects = [] {
            std::string body;
            for (int i = 0; i < 100000; ++i) body += R"({"a":)";
            return body;
        }();
        check_error(reject(Endpoint::chat_completions, objects), "", "request body nests deeper than 32 levels");
    }
    SECTION("32 levels are fine, 33 are not") {
        // The body object is level 1; an unknown field holds the deeper arrays.
        const auto nested = [](int depth) {
            return R"({"prompt":"a","x":)" + std::string(depth - 1, '[') + std::string(depth - 1, ']') + "}";
        };
        accept(Endpoint::completions, nested(32));
        check_error(reject(Endpoint::completions, nested(33)), "", "deeper than 32 levels");
    }
    SECTION("invalid UTF-8 in strings") {
        for (std::string_view bad : {"\xff", "\xc0\xaf", "\xed\xa0\x80", "\xe2\x82", "a\x80z"}) {
            const std::string body = R"({"prompt":")" + std::string(bad) + R"("})";
            const HttpError error = reject(Endpoint::completions, body);
            check_error(error, "", "request body is not valid JSON: invalid UTF-8");
        }
        const std::string in_key = "{\"\xff\":1,\"prompt\":\"a\"}";
        check_error(reject(Endpoint::completions, in_key), "", "not valid JSON");
    }
    SECTION("valid multi-byte UTF-8 passes") {
        CHECK(accept(Endpoint::completions, "{\"prompt\":\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}").prompts ==
              std::vector<std::string>{"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"});
    }
}

TEST_CASE("defaults", "[openai]") {
    const CompletionRequest request = accept(Endpoint::completions, R"({"prompt":"hi"})");
    CHECK(request.endpoint == Endpoint::completions);
    CHECK(request.model == "tiny-model");
    CHECK(request.prompts == std::vector<std::string>{"hi"});
    CHECK(request.n == 1);
    CHECK_FALSE(request.stream);
    CHECK_FALSE(request.include_usage);
    CHECK(request.sampling.max_tokens == 16);
    CHECK(request.sampling.temperature == 1.0);
    CHECK(request.sampling.top_p == 1.0);
    CHECK_FALSE(request.sampling.seed);
    CHECK(request.sampling.stop.empty());
}

TEST_CASE("max_tokens defaults to the engine's default_max_tokens", "[openai]") {
    Limits limits = test_limits();
    limits.default_max_tokens = 7;
    const auto parsed =
        parse_request("/v1/chat/completions", R"({"messages":[{"role":"user","content":"x"}]})", limits);
    CHECK(std::get<CompletionRequest>(parsed).sampling.max_tokens == 7);
}

TEST_CASE("null optional fields count as absent", "[openai]") {
    const CompletionRequest request =
        accept_completion(R"(,"model":null,"max_tokens":null,"temperature":null,"top_p":null,"seed":null,)"
                          R"("stop":null,"n":null,"stream":null,"stream_options":null)");
    CHECK(request.model == "tiny-model");
    CHECK(request.sampling.max_tokens == 16);
    CHECK(request.sampling.temperature == 1.0);
    CHECK(request.sampling.top_p == 1.0);
    CHECK_FALSE(request.sampling.seed);
    CHECK(request.sampling.stop.empty());
    CHECK(request.n == 1);
    CHECK_FALSE(request.stream);
}

TEST_CASE("unknown fields are ignored", "[openai]") {
    const CompletionRequest request =
        accept_completion(R"(,"user":"u1","metadata":{"a":"b"},"store":false,"messages":7,"ignore_eos":true)");
    CHECK(request.prompts == std::vector<std::string>{"hi"});
    CHECK(accept(Endpoint::chat_completions, R"({"messages":[{"role":"user","content":"x"}],"prompt":5})")
              .prompts.size() == 1);
}

TEST_CASE("the model is the head's to check; responses name the configured one", "[openai]") {
    CHECK(accept_completion(R"(,"model":"tiny-model")").model == "tiny-model");
    CHECK(accept_completion(R"(,"model":"served-name")").model == "tiny-model");
    CHECK(accept_completion("").model == "tiny-model");
}

TEST_CASE("endpoints", "[openai]") {
    const Limits limits = test_limits();
    const auto parsed = [&](std::string_view path) { return parse_request(path, R"({"prompt":"hi"})", limits); };
    CHECK(std::get<CompletionRequest>(parsed("/v1/completions")).endpoint == Endpoint::completions);

    const HttpError embeddings = std::get<HttpError>(parse_request("/v1/embeddings", R"({"input":"hi"})", limits));
    CHECK(embeddings.status == 400);
    CHECK(embeddings.type == "invalid_request_error");
    CHECK(embeddings.message == "the synthetic backend does not serve embeddings");
    CHECK(embeddings.code == "unsupported-endpoint");

    for (std::string_view path : {"/v1/responses", "/tokenize", "/v1/completions/", "/"}) {
        INFO(path);
        const HttpError missing = std::get<HttpError>(parsed(path));
        CHECK(missing.status == 404);
        CHECK(missing.type == "not_found_error");
        CHECK(missing.message == "no such endpoint: " + std::string(path));
    }
    // The path is checked first: a bad body on an unknown path is still a 404.
    CHECK(std::get<HttpError>(parse_request("/nope", "not json", limits)).status == 404);
}

TEST_CASE("fields the backend cannot honour are refused, naming the field", "[openai]") {
    const std::string messages = R"({"messages":[{"role":"user","content":"x"}])";
    const auto refused_both = [&](std::string_view field, std::string_view value) {
        INFO(field << ": " << value);
        const std::string member = "\"" + std::string(field) + "\":" + std::string(value);
        check_refused(reject_completion("," + member), field);
        check_refused(reject(Endpoint::chat_completions, messages + "," + member + "}"), field);
    };
    refused_both("top_logprobs", "0");
    refused_both("top_logprobs", "2");
    refused_both("prompt_logprobs", "1");
    refused_both("echo", "true");
    refused_both("suffix", R"("tail")");
    refused_both("best_of", "2");
    refused_both("use_beam_search", "true");
    refused_both("include_stop_str_in_output", "true");
    refused_both("logit_bias", R"({"50256":-100})");
    refused_both("presence_penalty", "0.5");
    refused_both("frequency_penalty", "-1");
    refused_both("repetition_penalty", "1.1");
    refused_both("top_k", "40");
    refused_both("top_k", "1");
    refused_both("min_p", "0.05");
    refused_both("min_tokens", "4");
    refused_both("stop_token_ids", "[2]");
    refused_both("bad_words", R"(["x"])");
    refused_both("allowed_token_ids", "[1,2]");
    refused_both("logits_processors", R"(["p"])");
    refused_both("truncate_prompt_tokens", "8");
    refused_both("response_format", R"({"type":"json_object"})");
    refused_both("response_format", R"({"type":"json_schema","json_schema":{"name":"x","schema":{}}})");
    refused_both("response_format", "{}");
    refused_both("tools", R"([{"type":"function","function":{"name":"f"}}])");
    refused_both("tool_choice", R"("auto")");
    refused_both("tool_choice", R"({"type":"function","function":{"name":"f"}})");
    refused_both("functions", R"([{"name":"f"}])");
    refused_both("function_call", R"("auto")");
    refused_both("guided_json", R"({"type":"object"})");
    refused_both("guided_regex", R"("a+")");
    refused_both("guided_choice", R"(["a","b"])");
    refused_both("guided_grammar", R"("root ::= x")");
    refused_both("structured_outputs", R"({"regex":"a"})");

    // logprobs is an integer for completions (any refused) and a boolean for chat.
    check_refused(reject_completion(R"(,"logprobs":0)"), "logprobs");
    check_refused(reject_completion(R"(,"logprobs":5)"), "logprobs");
    check_refused(reject(Endpoint::chat_completions, messages + R"(,"logprobs":true})"), "logprobs");
    accept(Endpoint::chat_completions, messages + R"(,"logprobs":false})");

    const HttpError error = reject_completion(R"(,"top_k":40)");
    CHECK(error.message == "the synthetic backend does not support 'top_k' (it takes only -1 or 0)");
}

TEST_CASE("the neutral values of refused fields change nothing and are accepted", "[openai]") {
    const std::string neutral =
        R"("top_logprobs":null,"prompt_logprobs":null,"echo":false,"suffix":"","best_of":1,)"
        R"("use_beam_search":false,"include_stop_str_in_output":false,"logit_bias":{},)"
        R"("presence_penalty":0,"frequency_penalty":0.0,"repetition_penalty":1,"top_k":-1,"min_p":0,)"
        R"("min_tokens":0,"stop_token_ids":[],"bad_words":[],"allowed_token_ids":[],"logits_processors":[],)"
        R"("truncate_prompt_tokens":null,"response_format":{"type":"text"},"tools":[],"tool_choice":"none",)"
        R"("functions":[],"function_call":"none","guided_json":null,"guided_regex":null,)"
        R"("guided_choice":null,"guided_grammar":null,"structured_outputs":null)";
    CHECK(accept_completion(R"(,"logprobs":null,)" + neutral).prompts == std::vector<std::string>{"hi"});
    accept_completion(R"(,"top_k":0)");
    accept(Endpoint::chat_completions,
           R"({"messages":[{"role":"user","content":"x"}],"logprobs":false,)" + neutral + "}");
}

TEST_CASE("max_tokens", "[openai]") {
    CHECK(accept_completion(R"(,"max_tokens":1)").sampling.max_tokens == 1);
    CHECK(accept_completion(R"(,"max_tokens":100)").sampling.max_tokens == 100);
    for (std::string_view bad :
         {"0", "-1", "101", "1.5", "2.0", "1e1", "\"10\"", "true", "18446744073709551615", "[]"}) {
        check_error(reject_completion(R"(,"max_tokens":)" + std::string(bad)), "max_tokens",
                    "'max_tokens' must be an integer between 1 and 100");
    }

    SECTION("chat also takes max_completion_tokens, which wins") {
        const std::string messages = R"({"messages":[{"role":"user","content":"x"}])";
        CHECK(accept(Endpoint::chat_completions, messages + R"(,"max_completion_tokens":7})").sampling.max_tokens == 7);
        CHECK(accept(Endpoint::chat_completions, messages + R"(,"max_tokens":9})").sampling.max_tokens == 9);
        CHECK(accept(Endpoint::chat_completions, messages + R"(,"max_tokens":9,"max_completion_tokens":7})")
                  .sampling.max_tokens == 7);
        check_error(reject(Endpoint::chat_completions, messages + R"(,"max_completion_tokens":0})"),
                    "max_completion_tokens", "'max_completion_tokens' must be an integer between 1 and 100");
    }
    SECTION("completions ignores max_completion_tokens") {
        CHECK(accept_completion(R"(,"max_completion_tokens":7)").sampling.max_tokens == 16);
    }
}

TEST_CASE("temperature", "[openai]") {
    CHECK(accept_completion(R"(,"temperature":0)").sampling.temperature == 0.0);
    CHECK(accept_completion(R"(,"temperature":0.7)").sampling.temperature == 0.7);
    CHECK(accept_completion(R"(,"temperature":2)").sampling.temperature == 2.0);
    for (std::string_view bad : {"-0.1", "2.01", "1e400"}) {
        check_error(reject_completion(R"(,"temperature":)" + std::string(bad)), "temperature",
                    "'temperature' must be between 0 and 2");
    }
    check_error(reject_completion(R"(,"temperature":"1")"), "temperature", "'temperature' must be a number");
}

TEST_CASE("top_p", "[openai]") {
    CHECK(accept_completion(R"(,"top_p":1)").sampling.top_p == 1.0);
    CHECK(accept_completion(R"(,"top_p":0.25)").sampling.top_p == 0.25);
    for (std::string_view bad : {"0", "-0.5", "1.01"}) {
        check_error(reject_completion(R"(,"top_p":)" + std::string(bad)), "top_p",
                    "'top_p' must be greater than 0 and at most 1");
    }
    check_error(reject_completion(R"(,"top_p":false)"), "top_p", "'top_p' must be a number");
}

TEST_CASE("seed", "[openai]") {
    CHECK(accept_completion(R"(,"seed":42)").sampling.seed == 42u);
    CHECK(accept_completion(R"(,"seed":-1)").sampling.seed == UINT64_MAX);
    CHECK(accept_completion(R"(,"seed":9223372036854775807)").sampling.seed == uint64_t{INT64_MAX});
    CHECK(accept_completion(R"(,"seed":-9223372036854775808)").sampling.seed == uint64_t{1} << 63);
    for (std::string_view bad : {"9223372036854775808", "1.5", "\"1\""}) {
        check_error(reject_completion(R"(,"seed":)" + std::string(bad)), "seed",
                    "'seed' must be a 64-bit signed integer");
    }
}

TEST_CASE("stop", "[openai]") {
    using Stops = std::vector<std::string>;
    CHECK(accept_completion(R"(,"stop":"\n")").sampling.stop == Stops{"\n"});
    CHECK(accept_completion(R"(,"stop":["a","bc","d","e"])").sampling.stop == Stops{"a", "bc", "d", "e"});
    CHECK(accept_completion(R"(,"stop":[])").sampling.stop.empty());

    check_error(reject_completion(R"(,"stop":["a","b","c","d","e"])"), "stop", "'stop' may hold at most 4 sequences");
    check_error(reject_completion(R"(,"stop":"")"), "stop", "'stop' sequences must not be empty");
    check_error(reject_completion(R"(,"stop":["a",""])"), "stop", "'stop' sequences must not be empty");
    check_error(reject_completion(R"(,"stop":[1])"), "stop", "'stop' must be a string or an array of strings");
    check_error(reject_completion(R"(,"stop":5)"), "stop", "'stop' must be a string or an array of strings");
}

TEST_CASE("n", "[openai]") {
    CHECK(accept_completion(R"(,"n":1)").n == 1);
    CHECK(accept_completion(R"(,"n":4)").n == 4);
    for (std::string_view bad : {"0", "5", "-2", "2.5", "\"2\""}) {
        check_error(reject_completion(R"(,"n":)" + std::string(bad)), "n", "'n' must be an integer between 1 and 4");
    }
}

TEST_CASE("stream and stream_options", "[openai]") {
    CHECK(accept_completion(R"(,"stream":true)").stream);
    CHECK_FALSE(accept_completion(R"(,"stream":false)").stream);
    check_error(reject_completion(R"(,"stream":"true")"), "stream", "'stream' must be a boolean");

    const CompletionRequest with_usage = accept_completion(R"(,"stream":true,"stream_options":{"include_usage":true})");
    CHECK(with_usage.stream);
    CHECK(with_usage.include_usage);
    CHECK_FALSE(accept_completion(R"(,"stream":true,"stream_options":{})").include_usage);
    CHECK_FALSE(accept_completion(R"(,"stream":true,"stream_options":{"include_usage":null})").include_usage);
    CHECK_FALSE(accept_completion(R"(,"stream":false,"stream_options":null)").include_usage);

    check_error(reject_completion(R"(,"stream":false,"stream_options":{"include_usage":true})"), "stream_options",
                "stream_options is only allowed when stream is true");
    check_error(reject_completion(R"(,"stream_options":{})"), "stream_options",
                "stream_options is only allowed when stream is true");
    check_error(reject_completion(R"(,"stream":true,"stream_options":5)"), "stream_options",
                "'stream_options' must be an object");
    check_error(reject_completion(R"(,"stream":true,"stream_options":{"include_usage":"yes"})"),
                "stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
}

TEST_CASE("completion prompt forms", "[openai]") {
    using Prompts = std::vector<std::string>;
    const auto prompts_of = [](std::string_view value) {
        return accept(Endpoint::completions, R"({"prompt":)" + std::string(value) + "}").prompts;
    };
    CHECK(prompts_of(R"("Say \"hi\"\n")") == Prompts{"Say \"hi\"\n"});
    CHECK(prompts_of(R"("")") == Prompts{""});
    CHECK(prompts_of(R"(["one"])") == Prompts{"one"});
    CHECK(prompts_of(R"(["one","two",""])") == Prompts{"one", "two", ""});

    const auto prompt_error = [](std::string_view value) {
        return reject(Endpoint::completions, R"({"prompt":)" + std::string(value) + "}");
    };
    SECTION("token ids are the ids as decimal words: the backend's tokens are words") {
        CHECK(prompts_of("[1,22,333]") == Prompts{"1 22 333"});
        CHECK(prompts_of("[0]") == Prompts{"0"});
        CHECK(prompts_of("[[4,5],[6]]") == Prompts{"4 5", "6"});
        CHECK(prompts_of("[[]]") == Prompts{""});
        CHECK(prompts_of(R"(["a",[7]])") == Prompts{"a", "7"});
        for (std::string_view ids : {"[1.5]", "[-1]", "[[1,-2]]", "[1,\"a\"]"}) {
            INFO(ids);
            check_error(prompt_error(ids), "prompt", "'prompt' token ids must be non-negative integers");
        }
    }
    SECTION("at most max_prompts prompts") {
        std::string many = "[";
        for (int i = 0; i < 257; ++i) many += i ? R"(,"p")" : R"("p")";
        many += "]";
        check_error(prompt_error(many), "prompt", "'prompt' may hold at most 256 prompts");
        many.replace(many.size() - 5, 4, "");  // 256 prompts
        CHECK(prompts_of(many).size() == 256);
    }
    check_error(prompt_error("[]"), "prompt", "'prompt' must not be an empty array");
    for (std::string_view bad : {"5", "{}", "true", R"(["a",1])", R"(["a",null])", "[{}]", "[null]", "[true]"}) {
        INFO(bad);
        check_error(
            prompt_error(bad), "prompt",
            "'prompt' must be a string, an array of strings, an array of token ids or an array of arrays of token ids");
    }
    check_error(reject(Endpoint::completions, "{}"), "prompt", "'prompt' is required");
    check_error(prompt_error("null"), "prompt", "'prompt' is required");
}

TEST_CASE("chat messages are rendered as role lines", "[openai]") {
    const CompletionRequest request = accept(Endpoint::chat_completions, R"({"messages":[
        {"role":"system","content":"Be brief."},
        {"role":"user","content":[{"type":"text","text":"Hello, "},{"type":"text","text":"there"}]},
        {"role":"assistant","content":null,"tool_calls":[]},
        {"role":"tool","content":"42","tool_call_id":"t1"},
        {"role":"developer","content":"dev"},
        {"role":"assistant"},
        {"role":"user","content":""}
    ],"prompt":5})");
    CHECK(request.endpoint == Endpoint::chat_completions);
    REQUIRE(request.prompts.size() == 1);
    CHECK(request.prompts[0] ==
          "system: Be brief.\n"
          "user: Hello, there\n"
          "assistant: \n"
          "tool: 42\n"
          "developer: dev\n"
          "assistant: \n"
          "user: \n"
          "assistant:");
    CHECK(request.sampling.max_tokens == 16);
}

TEST_CASE("chat message errors name the element", "[openai]") {
    const auto chat_error = [](std::string_view messages) {
        return reject(Endpoint::chat_completions, R"({"messages":)" + std::string(messages) + "}");
    };
    check_error(reject(Endpoint::chat_completions, R"({"prompt":"x"})"), "messages", "'messages' is required");
    check_error(chat_error("null"), "messages", "'messages' is required");
    check_error(chat_error(R"("hi")"), "messages", "'messages' must be an array of message objects");
    check_error(chat_error("[]"), "messages", "'messages' must not be empty");

    const std::string ok = R"({"role":"user","content":"a"},{"role":"user","content":"b"},)";
    check_error(chat_error("[" + ok + "7]"), "messages[2]", "'messages[2]' must be an object");
    check_error(chat_error("[" + ok + R"({"content":"c"}])"), "messages[2].role", "'messages[2].role' is required");
    check_error(chat_error("[" + ok + R"({"role":"robot","content":"c"}])"), "messages[2].role",
                "'messages[2].role' must be one of system, user, assistant, tool, developer");
    check_error(chat_error("[" + ok + R"({"role":1,"content":"c"}])"), "messages[2].role", "must be one of");
    check_error(chat_error(R"([{"role":"user"}])"), "messages[0].content", "'messages[0].content' is required");
    check_error(chat_error(R"([{"role":"system","content":null}])"), "messages[0].content",
                "'messages[0].content' is required");
    check_error(chat_error(R"([{"role":"user","content":3}])"), "messages[0].content",
                "'messages[0].content' must be a string or an array of content parts");
    check_error(chat_error(R"([{"role":"user","content":["x"]}])"), "messages[0].content[0]",
                "'messages[0].content[0]' must be an object");
    check_error(chat_error(R"([{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url"}]}])"),
                "messages[0].content[1].type", "only text content is supported");
    check_error(chat_error(R"([{"role":"user","content":[{"text":"a"}]}])"), "messages[0].content[0].type",
                "'messages[0].content[0].type' must be 'text'");
    check_error(chat_error(R"([{"role":"user","content":[{"type":"text","text":1}]}])"), "messages[0].content[0].text",
                "'messages[0].content[0].text' must be a string");
    check_error(chat_error(R"([{"role":"user","content":[{"type":"text"}]}])"), "messages[0].content[0].text",
                "'messages[0].content[0].text' must be a string");
}

TEST_CASE("chat validates the shared fields too", "[openai]") {
    const std::string messages = R"({"messages":[{"role":"user","content":"x"}])";
    const CompletionRequest request =
        accept(Endpoint::chat_completions,
               messages +
                   R"(,"n":2,"stream":true,"stream_options":{"include_usage":true},"seed":7,)"
                   R"("temperature":0.5,"top_p":0.9,"stop":["END"]})");
    CHECK(request.n == 2);
    CHECK(request.include_usage);
    CHECK(request.sampling.seed == 7u);
    CHECK(request.sampling.temperature == 0.5);
    CHECK(request.sampling.top_p == 0.9);
    CHECK(request.sampling.stop == std::vector<std::string>{"END"});
    check_error(reject(Endpoint::chat_completions, messages + R"(,"temperature":3})"), "temperature",
                "between 0 and 2");
}

// error_body and stream_error_event are core/api_error.hpp's; native engines answer with them.
TEST_CASE("error_body", "[openai]") {
    const json::object bare = json::parse(error_body(HttpError{.message = "bad \"thing\""})).as_object();
    const json::object& error = bare.at("error").as_object();
    CHECK(error.at("message") == "bad \"thing\"");
    CHECK(error.at("type") == "invalid_request_error");
    CHECK(error.at("param").is_null());
    CHECK(error.at("code").is_null());

    const json::object full =
        json::parse(
            error_body(HttpError{
                .status = 404, .type = "not_found_error", .message = "m", .param = "model", .code = "model_not_found"}))
            .as_object();
    CHECK(full.at("error").at("param") == "model");
    CHECK(full.at("error").at("code") == "model_not_found");
    CHECK(full.at("error").at("type") == "not_found_error");
}

TEST_CASE("stream_error_event", "[openai]") {
    const json::object payload = sse_payload(
        stream_error_event(HttpError{.status = 500, .type = "server_error", .message = "engine rank 1 died"}));
    CHECK(payload.at("error").at("message") == "engine rank 1 died");
    CHECK(payload.at("error").at("type") == "server_error");
}

TEST_CASE("completion_response", "[openai]") {
    const std::vector<Choice> choices = {{"one \"1\"", "stop"}, {"two\n", "length"}};
    const Usage usage{.prompt_tokens = 5, .completion_tokens = 7};

    SECTION("completions") {
        const json::object response =
            json::parse(completion_response(request_for(Endpoint::completions), "cmpl-1", 1700000000, choices, usage))
                .as_object();
        CHECK(response.at("id") == "cmpl-1");
        CHECK(response.at("object") == "text_completion");
        CHECK(response.at("created") == 1700000000);
        CHECK(response.at("model") == "tiny-model");
        const json::array& rendered = response.at("choices").as_array();
        REQUIRE(rendered.size() == 2);
        CHECK(rendered[0].at("index") == 0);
        CHECK(rendered[0].at("text") == "one \"1\"");
        CHECK(rendered[0].at("logprobs").is_null());
        CHECK(rendered[0].at("finish_reason") == "stop");
        CHECK(rendered[1].at("index") == 1);
        CHECK(rendered[1].at("text") == "two\n");
        CHECK(rendered[1].at("finish_reason") == "length");
        CHECK(response.at("usage").at("prompt_tokens") == 5);
        CHECK(response.at("usage").at("completion_tokens") == 7);
        CHECK(response.at("usage").at("total_tokens") == 12);
    }
    SECTION("chat") {
        const json::object response =
            json::parse(completion_response(request_for(Endpoint::chat_completions), "chatcmpl-1", 1, choices, usage))
                .as_object();
        CHECK(response.at("id") == "chatcmpl-1");
        CHECK(response.at("object") == "chat.completion");
        const json::array& rendered = response.at("choices").as_array();
        REQUIRE(rendered.size() == 2);
        CHECK(rendered[1].at("index") == 1);
        CHECK(rendered[1].at("message").at("role") == "assistant");
        CHECK(rendered[1].at("message").at("content") == "two\n");
        CHECK(rendered[1].at("logprobs").is_null());
        CHECK(rendered[1].at("finish_reason") == "length");
        CHECK_FALSE(rendered[1].as_object().contains("text"));
        CHECK(response.at("usage").at("total_tokens") == 12);
    }
}

TEST_CASE("stream_chunk for completions", "[openai]") {
    const CompletionRequest request = request_for(Endpoint::completions);
    const json::object chunk = sse_payload(stream_chunk(request, "cmpl-9", 1700000001, 3, "Hel", "", true));
    CHECK(chunk.at("id") == "cmpl-9");
    CHECK(chunk.at("object") == "text_completion");
    CHECK(chunk.at("created") == 1700000001);
    CHECK(chunk.at("model") == "tiny-model");
    const json::array& choices = chunk.at("choices").as_array();
    REQUIRE(choices.size() == 1);
    CHECK(choices[0].at("index") == 3);
    CHECK(choices[0].at("text") == "Hel");
    CHECK(choices[0].at("logprobs").is_null());
    CHECK(choices[0].at("finish_reason").is_null());
    CHECK_FALSE(chunk.contains("usage"));

    const json::object last = sse_payload(stream_chunk(request, "cmpl-9", 1, 0, "", "length", false));
    CHECK(last.at("choices").at(0).at("text") == "");
    CHECK(last.at("choices").at(0).at("finish_reason") == "length");
}

TEST_CASE("stream_chunk for chat", "[openai]") {
    const CompletionRequest request = request_for(Endpoint::chat_completions);
    const json::object first = sse_payload(stream_chunk(request, "chatcmpl-9", 5, 0, "Hi", "", true));
    CHECK(first.at("object") == "chat.completion.chunk");
    const json::object& delta = first.at("choices").at(0).at("delta").as_object();
    CHECK(delta.at("role") == "assistant");
    CHECK(delta.at("content") == "Hi");
    CHECK(first.at("choices").at(0).at("logprobs").is_null());
    CHECK(first.at("choices").at(0).at("finish_reason").is_null());

    const json::object later = sse_payload(stream_chunk(request, "chatcmpl-9", 5, 1, "!", "stop", false));
    const json::object& later_delta = later.at("choices").at(0).at("delta").as_object();
    CHECK_FALSE(later_delta.contains("role"));
    CHECK(later_delta.at("content") == "!");
    CHECK(later.at("choices").at(0).at("index") == 1);
    CHECK(later.at("choices").at(0).at("finish_reason") == "stop");
}

TEST_CASE("stream chunks carry usage null when usage is requested", "[openai]") {
    for (Endpoint endpoint : {Endpoint::completions, Endpoint::chat_completions}) {
        const json::object chunk = sse_payload(stream_chunk(request_for(endpoint, true), "id", 1, 0, "x", "", true));
        REQUIRE(chunk.contains("usage"));
        CHECK(chunk.at("usage").is_null());
    }
}

TEST_CASE("stream chunks escape their strings", "[openai]") {
    const std::string tricky = "quote\" back\\slash\nnew\ttab\x01\x1f \xc3\xa9 \xe2\x80\xa8 </script>";
    CompletionRequest request = request_for(Endpoint::chat_completions);
    request.model = "we\"ird\nmodel";
    const json::object chat = sse_payload(stream_chunk(request, "id\"1", 1, 0, tricky, "", true));
    CHECK(text(chat.at("choices").at(0).at("delta").at("content")) == tricky);
    CHECK(chat.at("model") == "we\"ird\nmodel");
    CHECK(chat.at("id") == "id\"1");

    request.endpoint = Endpoint::completions;
    const std::string event = stream_chunk(request, "id", 1, 0, tricky, "", false);
    // Raw newlines would end the SSE event early; all of them must be escaped.
    CHECK(event.find('\n') == event.size() - 2);
    CHECK(text(sse_payload(event).at("choices").at(0).at("text")) == tricky);

    SECTION("long deltas") {
        std::string long_delta;
        for (int i = 0; i < 2000; ++i) long_delta += "\"\n\xc3\xa9x";
        const json::object chunk = sse_payload(stream_chunk(request, "id", 1, 0, long_delta, "", false));
        CHECK(text(chunk.at("choices").at(0).at("text")) == long_delta);
    }
}

TEST_CASE("invalid UTF-8 in generated text becomes U+FFFD", "[openai]") {
    // A token boundary can split a multi-byte character; the output must stay valid JSON.
    const std::string split = "ab\xe2\x82";
    const CompletionRequest request = request_for(Endpoint::completions);
    const json::object chunk = sse_payload(stream_chunk(request, "id", 1, 0, split, "", false));
    CHECK(chunk.at("choices").at(0).at("text") == "ab\xEF\xBF\xBD\xEF\xBF\xBD");

    const json::object response = json::parse(completion_response(request, "id", 1,
                                                                  {{"\xff"
                                                                    "ok",
                                                                    "stop"}},
                                                                  Usage{}))
                                      .as_object();
    CHECK(response.at("choices").at(0).at("text") == "\xEF\xBF\xBDok");
}

TEST_CASE("stream_usage_chunk", "[openai]") {
    for (Endpoint endpoint : {Endpoint::completions, Endpoint::chat_completions}) {
        const json::object chunk = sse_payload(stream_usage_chunk(request_for(endpoint, true), "id-7", 99,
                                                                  Usage{.prompt_tokens = 3, .completion_tokens = 4}));
        CHECK(chunk.at("id") == "id-7");
        CHECK(chunk.at("object") ==
              (endpoint == Endpoint::chat_completions ? "chat.completion.chunk" : "text_completion"));
        CHECK(chunk.at("created") == 99);
        CHECK(chunk.at("model") == "tiny-model");
        CHECK(chunk.at("choices").as_array().empty());
        CHECK(chunk.at("usage").at("prompt_tokens") == 3);
        CHECK(chunk.at("usage").at("completion_tokens") == 4);
        CHECK(chunk.at("usage").at("total_tokens") == 7);
    }
}

TEST_CASE("stream_done", "[openai]") { CHECK(stream_done == "data: [DONE]\n\n"); }
