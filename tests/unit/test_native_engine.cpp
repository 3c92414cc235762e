// Unit tests for the native backends' engine (daemon/engine/native_engine.hpp) over the
// synthetic backend: an OpenAI request body in, the response's pieces out.
#include "engine/native_engine.hpp"
#include "engine/synthetic.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <chrono>
#include <map>
#include <regex>
#include <string>
#include <vector>

using namespace dpengine;
using namespace dpengine::engine;
namespace json = boost::json;

namespace {

constexpr std::string_view completions = "/v1/completions";
constexpr std::string_view chat = "/v1/chat/completions";

wire::EngineConfig test_config(uint32_t max_batch = 8, uint32_t max_model_len = 1000) {
    wire::EngineConfig config;
    config.backend = "synthetic";
    config.model = "synth-test";
    config.max_batch = max_batch;
    config.max_model_len = max_model_len;
    config.default_max_tokens = 6;
    return config;
}

NativeEngine make(const wire::EngineConfig& config = test_config()) {
    return NativeEngine(std::make_unique<SyntheticBackend>(std::chrono::nanoseconds(0)), config);
}

wire::Request request(uint64_t id, std::string_view path, std::string body) {
    return wire::Request{id, std::string(path), std::move(body), false};
}

// The synthetic text of (prompt, seed) for `n` tokens, from the backend's documented function.
std::string expected_text(const std::string& prompt, uint64_t seed, uint32_t n) {
    std::string text;
    const uint64_t h = SyntheticBackend::prompt_hash(prompt);
    for (uint32_t position = 0; position < n; ++position) {
        text += " ";
        text += SyntheticBackend::word(SyntheticBackend::token(h, seed, position));
    }
    return text;
}

// Every piece each request got, stepping until the engine has no work.
std::map<uint64_t, std::vector<wire::Output>> run(NativeEngine& engine) {
    std::map<uint64_t, std::vector<wire::Output>> pieces;
    for (int step = 0; engine.has_work(); ++step) {
        REQUIRE(step < 10000);
        wire::Outputs out;
        engine.step(out);
        CHECK(out.running == engine.running());
        CHECK(out.waiting == engine.waiting());
        for (auto& piece : out.items) {
            INFO("request " << piece.id << " at step " << step);
            auto& got = pieces[piece.id];
            CHECK((got.empty() || !got.back().done));  // nothing after the last piece
            got.push_back(std::move(piece));
        }
    }
    return pieces;
}

// The one piece of a non-streamed response, checked, and its body parsed.
json::object whole_response(const std::vector<wire::Output>& pieces, uint32_t status = 200) {
    REQUIRE(pieces.size() == 1);
    CHECK(pieces[0].status == status);
    CHECK(pieces[0].content_type == "application/json");
    CHECK(pieces[0].done);
    return json::parse(pieces[0].data).as_object();
}

// A streamed response: header on the first piece only, done on the last only; returns its
// events' payloads, "[DONE]" as the string it is.
std::vector<json::value> stream_events(const std::vector<wire::Output>& pieces) {
    REQUIRE(!pieces.empty());
    std::string data;
    for (size_t i = 0; i < pieces.size(); ++i) {
        INFO("piece " << i);
        CHECK(pieces[i].status == (i == 0 ? 200u : 0u));
        CHECK(pieces[i].content_type == (i == 0 ? "text/event-stream" : ""));
        CHECK(pieces[i].done == (i + 1 == pieces.size()));
        data += pieces[i].data;
    }
    std::vector<json::value> events;
    for (size_t at = 0; at < data.size();) {
        REQUIRE(data.compare(at, 6, "data: ") == 0);
        const size_t end = data.find("\n\n", at);
        REQUIRE(end != std::string::npos);
        const std::string payload = data.substr(at + 6, end - at - 6);
        events.push_back(payload == "[DONE]" ? json::value(json::string("[DONE]")) : json::parse(payload));
        at = end + 2;
    }
    return events;
}

uint32_t tokens_of(const std::vector<wire::Output>& pieces) {
    uint32_t total = 0;
    for (const auto& piece : pieces) total += piece.tokens;
    return total;
}

std::string text(const json::value& value) { return std::string(value.as_string()); }

// Choice index → its text, from the content chunks of a stream.
std::map<int64_t, std::string> streamed_texts(const std::vector<json::value>& events, bool is_chat) {
    std::map<int64_t, std::string> texts;
    for (const auto& event : events) {
        if (!event.is_object() || event.at("choices").as_array().empty()) continue;
        const json::value& choice = event.at("choices").at(0);
        texts[choice.at("index").as_int64()] +=
            is_chat ? text(choice.at("delta").at("content")) : text(choice.at("text"));
    }
    return texts;
}

}  // namespace

TEST_CASE("native engine: a completion, whole", "[native_engine]") {
    NativeEngine engine = make();
    engine.add(
        request(41, completions, R"({"model":"whatever","prompt":"hello there world","max_tokens":5,"seed":3})"));
    CHECK(engine.waiting() == 1);
    CHECK(engine.running() == 0);
    auto pieces = run(engine);
    REQUIRE(pieces.size() == 1);
    const json::object response = whole_response(pieces[41]);
    CHECK(pieces[41][0].tokens == 5);
    CHECK(response.at("id") == "cmpl-41");
    CHECK(response.at("object") == "text_completion");
    CHECK(response.at("model") == "synth-test");  // the engine's name, not the client's
    const json::array& choices = response.at("choices").as_array();
    REQUIRE(choices.size() == 1);
    CHECK(choices[0].at("index") == 0);
    CHECK(text(choices[0].at("text")) == expected_text("hello there world", 3, 5));
    CHECK(choices[0].at("finish_reason") == "length");
    CHECK(response.at("usage") == json::value({{"prompt_tokens", 3}, {"completion_tokens", 5}, {"total_tokens", 8}}));
    CHECK(engine.running() == 0);
    CHECK(engine.waiting() == 0);
}

TEST_CASE("native engine: defaults are seed 0 and the configured default_max_tokens", "[native_engine]") {
    NativeEngine engine = make();
    engine.add(request(1, completions, R"({"prompt":"defaults"})"));
    auto pieces = run(engine);
    const json::object response = whole_response(pieces[1]);
    CHECK(text(response.at("choices").at(0).at("text")) == expected_text("defaults", 0, 6));
}

TEST_CASE("native engine: a chat stream with usage", "[native_engine]") {
    NativeEngine engine = make();
    wire::Request r = request(7, chat,
                              R"({"messages":[{"role":"user","content":"hi"}],"max_completion_tokens":4,)"
                              R"("seed":9,"stream":true,"stream_options":{"include_usage":true}})");
    r.stream = true;
    engine.add(r);
    auto pieces = run(engine);
    const std::vector<json::value> events = stream_events(pieces[7]);
    CHECK(tokens_of(pieces[7]) == 4);
    REQUIRE(events.size() >= 3);
    CHECK(events.back() == "[DONE]");
    const json::object& usage_chunk = events[events.size() - 2].as_object();
    CHECK(usage_chunk.at("choices").as_array().empty());
    // "user: hi\nassistant:" is three words.
    CHECK(usage_chunk.at("usage") ==
          json::value({{"prompt_tokens", 3}, {"completion_tokens", 4}, {"total_tokens", 7}}));
    const std::vector<json::value> content(events.begin(), events.end() - 2);
    for (size_t i = 0; i < content.size(); ++i) {
        INFO("chunk " << i);
        const json::object& chunk = content[i].as_object();
        CHECK(chunk.at("id") == "chatcmpl-7");
        CHECK(chunk.at("object") == "chat.completion.chunk");
        CHECK(chunk.at("model") == "synth-test");
        CHECK(chunk.at("usage").is_null());
        const json::object& delta = chunk.at("choices").at(0).at("delta").as_object();
        CHECK(delta.contains("role") == (i == 0));
        CHECK(chunk.at("choices").at(0).at("finish_reason").is_null() == (i + 1 < content.size()));
    }
    CHECK(content.back().at("choices").at(0).at("finish_reason") == "length");
    CHECK(streamed_texts(content, true) ==
          std::map<int64_t, std::string>{{0, expected_text("user: hi\nassistant:", 9, 4)}});
}

TEST_CASE("native engine: a completions stream without usage sends no usage chunk", "[native_engine]") {
    NativeEngine engine = make();
    engine.add(request(3, completions, R"({"prompt":"p q","max_tokens":3,"stream":true})"));
    auto pieces = run(engine);
    const std::vector<json::value> events = stream_events(pieces[3]);
    CHECK(pieces[3].size() == 3);  // one piece per step, the last one ending the stream
    REQUIRE(events.size() == 4);
    CHECK(events.back() == "[DONE]");
    for (size_t i = 0; i + 1 < events.size(); ++i) CHECK_FALSE(events[i].as_object().contains("usage"));
    CHECK(streamed_texts(events, false) == std::map<int64_t, std::string>{{0, expected_text("p q", 0, 3)}});
}

TEST_CASE("native engine: n = 2 uses seed and seed + 1; prompt tokens count once", "[native_engine]") {
    NativeEngine engine = make();
    engine.add(request(5, completions, R"({"prompt":"two answers please","n":2,"seed":11,"max_tokens":8})"));
    auto pieces = run(engine);
    const json::object response = whole_response(pieces[5]);
    const json::array& choices = response.at("choices").as_array();
    REQUIRE(choices.size() == 2);
    CHECK(text(choices[0].at("text")) == expected_text("two answers please", 11, 8));
    CHECK(text(choices[1].at("text")) == expected_text("two answers please", 12, 8));
    CHECK(choices[1].at("index") == 1);
    CHECK(response.at("usage") == json::value({{"prompt_tokens", 3}, {"completion_tokens", 16}, {"total_tokens", 19}}));
    CHECK(pieces[5][0].tokens == 16);
}

TEST_CASE("native engine: a list of prompts, n each: choice p * n + i", "[native_engine]") {
    NativeEngine engine = make();
    SECTION("whole") {
        engine.add(request(9, completions, R"({"prompt":["a b","c"],"n":2,"seed":4,"max_tokens":3})"));
        auto pieces = run(engine);
        const json::object response = whole_response(pieces[9]);
        const json::array& choices = response.at("choices").as_array();
        REQUIRE(choices.size() == 4);
        const std::vector<std::string> want = {expected_text("a b", 4, 3), expected_text("a b", 5, 3),
                                               expected_text("c", 4, 3), expected_text("c", 5, 3)};
        for (size_t k = 0; k < 4; ++k) {
            INFO("choice " << k);
            CHECK(choices[k].at("index") == static_cast<int64_t>(k));
            CHECK(text(choices[k].at("text")) == want[k]);
        }
        CHECK(response.at("usage") ==
              json::value({{"prompt_tokens", 3}, {"completion_tokens", 12}, {"total_tokens", 15}}));
    }
    SECTION("streamed") {
        engine.add(request(9, completions, R"({"prompt":["a b","c"],"n":2,"max_tokens":2,"stream":true})"));
        auto pieces = run(engine);
        const auto texts = streamed_texts(stream_events(pieces[9]), false);
        CHECK(texts ==
              std::map<int64_t, std::string>{{0, expected_text("a b", 0, 2)},
                                             {1, expected_text("a b", 1, 2)},
                                             {2, expected_text("c", 0, 2)},
                                             {3, expected_text("c", 1, 2)}});
        CHECK(tokens_of(pieces[9]) == 8);
    }
}

TEST_CASE("native engine: stop strings end a choice with 'stop'", "[native_engine]") {
    const std::string full = expected_text("stop here", 2, 10);
    const std::string stop = full.substr(full.find(' ', 1), 5);  // from the second word
    NativeEngine engine = make();
    engine.add(
        request(1, completions, R"({"prompt":"stop here","seed":2,"max_tokens":10,"stop":[")" + stop + R"("]})"));
    auto pieces = run(engine);
    const json::object response = whole_response(pieces[1]);
    CHECK(text(response.at("choices").at(0).at("text")) == full.substr(0, full.find(stop)));
    CHECK(response.at("choices").at(0).at("finish_reason") == "stop");
}

TEST_CASE("native engine: load counts requests; waiting until one of its sequences runs", "[native_engine]") {
    NativeEngine engine = make(test_config(2));
    engine.add(request(1, completions, R"({"prompt":"a","n":3,"max_tokens":2})"));
    engine.add(request(2, completions, R"({"prompt":"b","max_tokens":2})"));
    CHECK(engine.waiting() == 2);
    CHECK(engine.running() == 0);
    wire::Outputs out;
    engine.step(out);  // two of request 1's sequences run; request 2 waits behind the third
    CHECK(out.items.empty());
    CHECK(out.running == 1);
    CHECK(out.waiting == 1);
    auto pieces = run(engine);
    CHECK(whole_response(pieces[1]).at("choices").as_array().size() == 3);
    whole_response(pieces[2]);
    CHECK(engine.running() == 0);
    CHECK(engine.waiting() == 0);
}

TEST_CASE("native engine: abort drops the request's load at once and ends its output", "[native_engine]") {
    NativeEngine engine = make(test_config(2));
    engine.add(request(1, completions, R"({"prompt":"long","n":2,"max_tokens":50,"stream":true})"));
    engine.add(request(2, completions, R"({"prompt":"queued","max_tokens":50})"));
    wire::Outputs out;
    engine.step(out);
    REQUIRE(out.items.size() == 1);
    CHECK(out.items[0].id == 1);
    CHECK_FALSE(out.items[0].done);
    CHECK(engine.running() == 1);
    CHECK(engine.waiting() == 1);

    engine.abort(2);  // waiting
    CHECK(engine.waiting() == 0);
    engine.abort(1);  // running, both of its sequences
    CHECK(engine.running() == 0);
    CHECK_FALSE(engine.has_work());
    CHECK(engine.loop().running() == 0);
    CHECK(engine.loop().waiting() == 0);
    CHECK(run(engine).empty());

    engine.abort(1);  // again, and unknown ids: nothing
    engine.abort(12345);
    engine.add(request(3, completions, R"({"prompt":"after","max_tokens":2})"));
    CHECK(text(whole_response(run(engine)[3]).at("choices").at(0).at("text")) == expected_text("after", 0, 2));
}

TEST_CASE("native engine: abort_all forgets everything", "[native_engine]") {
    NativeEngine engine = make(test_config(1));
    for (uint64_t id = 1; id <= 3; ++id) engine.add(request(id, completions, R"({"prompt":"x","max_tokens":9})"));
    engine.add(request(4, completions, "not json"));
    wire::Outputs out;
    engine.step(out);
    engine.add(request(5, completions, "not json"));
    engine.abort_all();
    CHECK(engine.running() == 0);
    CHECK(engine.waiting() == 0);
    CHECK_FALSE(engine.has_work());
    CHECK(run(engine).empty());
}

TEST_CASE("native engine: refused requests get one error piece", "[native_engine]") {
    NativeEngine engine = make();
    engine.add(request(1, completions, "{not json"));
    engine.add(request(2, "/v1/embeddings", R"({"input":"x"})"));
    engine.add(request(3, "/v1/nothing", "{}"));
    engine.add(request(4, chat, R"({"messages":[{"role":"user","content":"x"}],"logprobs":true,"stream":true})"));
    engine.add(request(5, completions, R"({"prompt":[1,-2,3]})"));
    CHECK(engine.has_work());
    CHECK(engine.running() == 0);
    CHECK(engine.waiting() == 0);
    auto pieces = run(engine);
    REQUIRE(pieces.size() == 5);
    CHECK(pieces[1][0].tokens == 0);

    const auto error_of = [&](uint64_t id, uint32_t status) {
        return whole_response(pieces[id], status).at("error").as_object();
    };
    CHECK_THAT(text(error_of(1, 400).at("message")), Catch::Contains("not valid JSON"));
    const json::object embeddings = error_of(2, 400);
    CHECK(embeddings.at("message") == "the synthetic backend does not serve embeddings");
    CHECK(embeddings.at("code") == "unsupported-endpoint");
    CHECK(error_of(3, 404).at("type") == "not_found_error");
    const json::object logprobs = error_of(4, 400);  // a stream refused before it starts: plain JSON
    CHECK(logprobs.at("param") == "logprobs");
    CHECK(logprobs.at("code") == "unsupported-parameter");
    CHECK(error_of(5, 400).at("param") == "prompt");
}

TEST_CASE("native engine: an aborted refused request sends nothing", "[native_engine]") {
    NativeEngine engine = make();
    engine.add(request(1, completions, "[]"));
    engine.abort(1);
    CHECK_FALSE(engine.has_work());
    CHECK(run(engine).empty());
}

TEST_CASE("native engine: a prompt that leaves no room within max_model_len is refused with 400", "[native_engine]") {
    NativeEngine engine = make(test_config(8, 4));
    engine.add(request(1, completions, R"({"prompt":"one two three four","max_tokens":2})"));
    engine.add(request(2, completions, R"({"prompt":"one two three four five","max_tokens":2,"stream":true})"));
    engine.add(request(3, completions, R"({"prompt":["fits","one two three four"]})"));
    engine.add(request(4, chat, R"({"messages":[{"role":"user","content":"a b c d"}]})"));
    engine.add(request(5, completions, R"({"prompt":"one two three","max_tokens":2})"));  // room for one token
    CHECK(engine.running() == 0);                                                         // only the last was queued
    CHECK(engine.waiting() == 1);
    auto pieces = run(engine);
    const auto error_of = [&](uint64_t id) { return whole_response(pieces[id], 400).at("error").as_object(); };
    for (uint64_t id : {1, 2, 3, 4}) {
        CAPTURE(id);
        const json::object error = error_of(id);
        CHECK(error.at("type") == "invalid_request_error");
        CHECK(error.at("code") == "context-length-exceeded");
        CHECK_THAT(text(error.at("message")),
                   Catch::Contains("maximum context length is 4 tokens (engine.max_model_len)"));
    }
    CHECK_THAT(text(error_of(1).at("message")), Catch::Contains("the prompt has 4 tokens"));
    CHECK_THAT(text(error_of(2).at("message")), Catch::Contains("the prompt has 5 tokens"));
    CHECK_THAT(text(error_of(3).at("message")), Catch::Contains("prompt 1 has 4 tokens"));
    CHECK(error_of(4).at("param") == "messages");
    const json::object response = whole_response(pieces[5]);
    CHECK(response.at("choices").at(0).at("finish_reason") == "length");
    CHECK(response.at("usage").at("completion_tokens") == 1);
}

TEST_CASE("native engine: lockstep's loop() and deliver() make the same pieces as step()", "[native_engine]") {
    const std::string body = R"({"prompt":"same either way","n":2,"max_tokens":4,"stream":true})";
    NativeEngine stepped = make();
    stepped.add(request(1, completions, body));
    NativeEngine delivered = make();
    delivered.add(request(1, completions, body));
    delivered.add(request(2, completions, "bad"));
    std::vector<std::string> a, b;
    while (stepped.has_work()) {
        wire::Outputs out;
        stepped.step(out);
        for (const auto& piece : out.items) a.push_back(piece.data);
    }
    bool error_seen = false;
    while (delivered.has_work()) {
        TokenOutputs tokens;
        delivered.loop().step(tokens);
        wire::Outputs out;
        delivered.deliver(tokens, out);
        for (const auto& piece : out.items) {
            if (piece.id == 2) {
                error_seen = true;
                CHECK(piece.status == 400);
            } else {
                b.push_back(piece.data);
            }
        }
    }
    CHECK(error_seen);
    // The same bytes but for "created", which may fall on either side of a second.
    const auto without_created = [](std::vector<std::string> pieces) {
        for (auto& piece : pieces) piece = std::regex_replace(piece, std::regex(R"("created":\d+)"), "");
        return pieces;
    };
    CHECK(!a.empty());
    CHECK(without_created(a) == without_created(b));
    // An error waiting for delivery is what has_ready_output() reports, loop or no loop.
    delivered.add(request(3, completions, "bad"));
    CHECK(delivered.has_ready_output());
    CHECK_FALSE(delivered.loop().has_work());
    TokenOutputs none;
    wire::Outputs out;
    delivered.deliver(none, out);
    REQUIRE(out.items.size() == 1);
    CHECK(out.items[0].id == 3);
    CHECK_FALSE(delivered.has_ready_output());
}
