#include "head/request_body.hpp"
#include "head/router.hpp"

#include <catch2/catch.hpp>

#include <limits>
#include <map>
#include <vector>

using dpengine::head::LoadPolicy;
using dpengine::head::member_value_span;
using dpengine::head::ModelNames;
using dpengine::head::RetryState;
using dpengine::head::route_body;
using dpengine::head::RouteCandidate;
using dpengine::head::RoutedBody;
using dpengine::openai::HttpError;

namespace {

std::vector<RouteCandidate> idle_ranks(uint32_t n) {
    std::vector<RouteCandidate> out;
    for (uint32_t r = 0; r < n; ++r) out.push_back({r, true, 0, 0, 0});
    return out;
}

}  // namespace

TEST_CASE("the load policy picks the rank with the fewest requests in flight plus queued", "[router]") {
    LoadPolicy policy;
    auto ranks = idle_ranks(3);
    ranks[0].in_flight = 2;
    ranks[1].in_flight = 1;
    ranks[2].in_flight = 0;
    ranks[2].engine_queued = 3;  // its engine has a queue of its own: the busiest
    REQUIRE(policy.pick(ranks) == 1u);
    ranks[1].in_flight = 2;
    ranks[2].engine_queued = 0;
    REQUIRE(policy.pick(ranks) == 2u);
}

TEST_CASE("equal load goes to the emptier KV cache, then round-robin", "[router]") {
    LoadPolicy policy;
    auto ranks = idle_ranks(3);
    ranks[0].kv_cache_usage = 0.5;
    ranks[1].kv_cache_usage = 0.1;
    ranks[2].kv_cache_usage = 0.5;
    REQUIRE(policy.pick(ranks) == 1u);

    LoadPolicy fair;
    auto equal = idle_ranks(3);
    std::map<uint32_t, int> picked;
    for (int i = 0; i < 30; ++i) ++picked[*fair.pick(equal)];
    REQUIRE(picked == std::map<uint32_t, int>{{0, 10}, {1, 10}, {2, 10}});
}

TEST_CASE("ranks that are not routable and the excepted rank are never picked", "[router]") {
    LoadPolicy policy;
    auto ranks = idle_ranks(3);
    ranks[0].routable = false;  // draining, unhealthy, lost, ...
    ranks[1].in_flight = 50;
    ranks[2].in_flight = 0;
    REQUIRE(policy.pick(ranks, 2u) == 1u);
    ranks[1].routable = false;
    REQUIRE_FALSE(policy.pick(ranks, 2u));
    REQUIRE(policy.pick(ranks) == 2u);
    REQUIRE_FALSE(policy.pick(std::vector<RouteCandidate>{}));
}

TEST_CASE("a request moves to another rank once, and only before any response", "[router]") {
    RetryState fresh;
    REQUIRE(fresh.may_retry());
    RetryState answered{.responded = true};
    REQUIRE_FALSE(answered.may_retry());
    RetryState moved{.retried = true};
    REQUIRE_FALSE(moved.may_retry());
}

TEST_CASE("the body goes to the engine byte for byte", "[request_body]") {
    ModelNames names{"tiny", ""};
    std::string body = R"({"model":"tiny","prompt":[72,101],"temperature":1.0E0,"x-vendor":{"a":[1,2]},"stream":true})";
    auto routed = route_body(body, names);
    REQUIRE(std::holds_alternative<RoutedBody>(routed));
    REQUIRE(std::get<RoutedBody>(routed).body == body);
    REQUIRE(std::get<RoutedBody>(routed).stream);
    auto no_model = route_body(R"({"prompt":"hi"})", names);
    REQUIRE(std::get<RoutedBody>(no_model).body == R"({"prompt":"hi"})");
    REQUIRE_FALSE(std::get<RoutedBody>(no_model).stream);
}

TEST_CASE("the model-name mapping replaces only the value of model", "[request_body]") {
    ModelNames names{"tiny", "/models/tiny-q8.gguf"};
    std::string body = "{ \"messages\": [{\"role\":\"user\",\"content\":\"model\"}] ,\n \"model\" : \"tiny\", \"n\":1}";
    auto routed = route_body(body, names);
    REQUIRE(std::get<RoutedBody>(routed).body ==
            "{ \"messages\": [{\"role\":\"user\",\"content\":\"model\"}] ,\n \"model\" : \"/models/tiny-q8.gguf\", "
            "\"n\":1}");
}

TEST_CASE("the completion tokens a body allows: max_tokens times its choices", "[request_body]") {
    ModelNames names{"tiny", ""};
    auto limit = [&](std::string_view body) { return std::get<RoutedBody>(route_body(body, names)).token_limit; };
    REQUIRE_FALSE(limit(R"({"prompt":"hi"})").has_value());  // the engine's default applies
    REQUIRE(limit(R"({"max_tokens":1})") == 1u);
    REQUIRE(limit(R"({"max_tokens":16,"n":4})") == 64u);
    REQUIRE(limit(R"({"max_tokens":16,"n":2,"best_of":5})") == 80u);
    REQUIRE(limit(R"({"max_completion_tokens":32,"max_tokens":8})") == 32u);
    REQUIRE(limit(R"({"max_completion_tokens":7.0})") == 7u);
    REQUIRE(limit(R"({"max_tokens":0})") == 0u);
    // Not a count: the engine's to refuse, no bound here.
    for (auto body :
         {R"({"max_tokens":-1})", R"({"max_tokens":"9"})", R"({"max_tokens":2.5})", R"({"max_tokens":null})"}) {
        REQUIRE_FALSE(limit(body).has_value());
    }
    REQUIRE(limit(R"({"max_tokens":4294967296,"n":4294967296})") == std::numeric_limits<uint64_t>::max());
}

TEST_CASE("bodies the head refuses itself", "[request_body]") {
    ModelNames names{"tiny", ""};
    auto error = [&](std::string_view body) { return std::get<HttpError>(route_body(body, names)); };
    REQUIRE(error("{\"model\":").status == 400);
    REQUIRE(error("[1,2]").message == "request body must be a JSON object");
    REQUIRE(error(R"({"model":7})").param == "model");
    HttpError wrong = error(R"({"model":"other"})");
    REQUIRE(wrong.status == 404);
    REQUIRE(wrong.code == "model_not_found");
    std::string deep(40, '[');
    REQUIRE(error("{\"a\":" + deep + std::string(40, ']') + "}").message.find("deeper than 32") != std::string::npos);
}

TEST_CASE("member_value_span finds top-level members only", "[request_body]") {
    std::string body = R"({"a":{"model":"inner"},"s":"x\"model\":1","model":"top","z":[]})";
    auto [first, last] = member_value_span(body, "model");
    REQUIRE(body.substr(first, last - first) == "\"top\"");
    REQUIRE(member_value_span(R"({"a":1})", "model").first == std::string::npos);
    auto [nf, nl] = member_value_span(R"({"n" : -1.5e3 , "model":null})", "n");
    REQUIRE(std::string(R"({"n" : -1.5e3 , "model":null})").substr(nf, nl - nf) == "-1.5e3");
}
