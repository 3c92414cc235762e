#include "openai_stream.hpp"

#include <boost/json.hpp>

namespace dpengine::engine {
namespace json = boost::json;

std::string completion_request_body(const wire::Add& request, std::string_view model) {
    json::object body;
    body["model"] = model;
    body["prompt"] = request.prompt;
    body["max_tokens"] = request.max_tokens;
    body["temperature"] = request.temperature;
    body["top_p"] = request.top_p;
    if (request.seed != 0) body["seed"] = static_cast<int64_t>(request.seed);
    if (!request.stop.empty()) {
        json::array stop;
        for (const auto& s : request.stop) stop.emplace_back(s);
        body["stop"] = std::move(stop);
    }
    body["stream"] = true;
    body["stream_options"] = json::object{{"include_usage", true}};
    return json::serialize(body);
}

void SseParser::end_line(std::vector<std::string>& events) {
    if (line_.empty()) {
        if (has_data_) events.push_back(std::move(data_));
        data_.clear();
        has_data_ = false;
        return;
    }
    std::string_view line = line_;
    if (line.front() != ':') {  // ':' starts a comment
        size_t colon = line.find(':');
        std::string_view field = line.substr(0, colon);
        std::string_view value = colon == std::string_view::npos ? std::string_view() : line.substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
        if (field == "data") {
            if (has_data_) data_ += '\n';
            data_ += value;
            has_data_ = true;
        }
    }
    line_.clear();
}

bool SseParser::feed(std::string_view bytes, std::vector<std::string>& events) {
    for (char c : bytes) {
        if (after_cr_) {
            after_cr_ = false;
            if (c == '\n') continue;
        }
        if (c == '\r' || c == '\n') {
            after_cr_ = c == '\r';
            end_line(events);
            continue;
        }
        if (line_.size() + data_.size() >= max_event_bytes) return false;
        line_ += c;
    }
    return true;
}

namespace {

std::optional<uint32_t> token_count(const json::object& usage, std::string_view key) {
    const json::value* v = usage.if_contains(key);
    if (!v) return std::nullopt;
    if (auto n = v->if_int64(); n && *n >= 0 && *n <= UINT32_MAX) return static_cast<uint32_t>(*n);
    if (auto n = v->if_uint64(); n && *n <= UINT32_MAX) return static_cast<uint32_t>(*n);
    return std::nullopt;
}

}  // namespace

Result<CompletionChunk> parse_completion_chunk(std::string_view data) {
    boost::system::error_code ec;
    json::value doc = json::parse(data, ec);
    auto bad = [&](const std::string& what) {
        std::string shown(data.substr(0, 200));
        return Error{"the server sent " + what + ": " + shown, "bad-upstream"};
    };
    if (ec) return bad("an event that is not JSON (" + ec.message() + ")");
    const json::object* object = doc.if_object();
    if (!object) return bad("an event that is not a JSON object");
    CompletionChunk chunk;
    if (const json::value* error = object->if_contains("error")) {
        chunk.error = "the server reported an error";
        if (const json::object* e = error->if_object()) {
            if (const json::value* message = e->if_contains("message"); message && message->is_string())
                chunk.error = std::string(message->get_string());
        } else if (error->is_string()) {
            chunk.error = std::string(error->get_string());
        }
        return chunk;
    }
    if (const json::value* choices = object->if_contains("choices")) {
        const json::array* list = choices->if_array();
        if (!list) return bad("\"choices\" that is not an array");
        if (!list->empty()) {
            const json::object* choice = (*list)[0].if_object();
            if (!choice) return bad("a choice that is not an object");
            if (const json::value* text = choice->if_contains("text")) {
                if (!text->is_string()) return bad("a choice whose \"text\" is not a string");
                chunk.text = std::string(text->get_string());
            }
            if (const json::value* finish = choice->if_contains("finish_reason"); finish && finish->is_string())
                chunk.finish_reason = std::string(finish->get_string());
        }
    }
    if (const json::value* usage = object->if_contains("usage"); usage && usage->is_object()) {
        chunk.prompt_tokens = token_count(usage->get_object(), "prompt_tokens");
        chunk.completion_tokens = token_count(usage->get_object(), "completion_tokens");
    }
    return chunk;
}

}  // namespace dpengine::engine
