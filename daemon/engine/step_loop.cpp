#include "step_loop.hpp"

#include <algorithm>

namespace dpengine::engine {
namespace {

size_t longest_stop(const Sequence& seq) {
    size_t n = 0;
    for (const auto& s : seq.stop) n = std::max(n, s.size());
    return n;
}

// Finds the earliest stop string that ends inside the newest `piece_size` bytes of text.
size_t find_stop(const Sequence& seq, size_t piece_size) {
    size_t best = std::string::npos;
    for (const auto& stop : seq.stop) {
        size_t from = seq.text.size() - piece_size;
        from = from >= stop.size() - 1 ? from - (stop.size() - 1) : 0;
        size_t at = seq.text.find(stop, from);
        if (at < best) best = at;
    }
    return best;
}

bool is_utf8_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Moves `end` back so text[sent, end) does not stop inside a UTF-8 character: every chunk
// becomes a JSON string on its own, and half a character would become garbage.
size_t utf8_boundary(const std::string& text, size_t sent, size_t end) {
    if (end == sent) return end;
    size_t lead = end - 1;  // the start of the last character
    while (lead > sent && end - lead < 4 && is_utf8_continuation(text[lead])) --lead;
    unsigned char c = static_cast<unsigned char>(text[lead]);
    if (c < 0xC0) return end;  // ASCII, or stray continuation bytes that no wait would complete
    size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
    return end - lead < need ? lead : end;
}

}  // namespace

StepLoop::StepLoop(std::unique_ptr<Backend> backend, uint32_t max_batch, uint32_t max_model_len)
    : backend_(std::move(backend)), max_batch_(std::max(1u, max_batch)), max_model_len_(max_model_len) {}

void StepLoop::add(const SequenceRequest& request) {
    auto seq = std::make_unique<Sequence>();
    static_cast<SequenceRequest&>(*seq) = request;
    std::erase_if(seq->stop, [](const std::string& s) { return s.empty(); });
    waiting_.push_back(std::move(seq));
}

void StepLoop::abort(uint64_t id) {
    auto same = [id](const std::unique_ptr<Sequence>& s) { return s->id == id; };
    if (auto it = std::find_if(running_.begin(), running_.end(), same); it != running_.end()) {
        backend_->release(**it);
        running_.erase(it);
        return;
    }
    std::erase_if(waiting_, same);
}

void StepLoop::abort_all() {
    for (auto& s : running_) backend_->release(*s);
    running_.clear();
    waiting_.clear();
}

void StepLoop::emit(Sequence& seq, uint32_t new_tokens, const char* finish, TokenOutputs& out) {
    size_t end = seq.text.size();
    if (!*finish) {
        size_t hold = longest_stop(seq);
        end = end > seq.sent + (hold ? hold - 1 : 0) ? end - (hold ? hold - 1 : 0) : seq.sent;
        end = utf8_boundary(seq.text, seq.sent, end);
    }
    if (end == seq.sent && new_tokens == 0 && !*finish) return;
    TokenOutput& o = out.items.emplace_back();
    o.id = seq.id;
    o.text.assign(seq.text, seq.sent, end - seq.sent);
    o.new_tokens = new_tokens;
    o.finish = finish;
    o.prompt_tokens = seq.prompt_tokens;
    seq.sent = end;
}

void StepLoop::admit_waiting(TokenOutputs& out) {
    while (running_.size() < max_batch_ && !waiting_.empty()) {
        Sequence& seq = *waiting_.front();
        if (!backend_->admit(seq)) break;
        if (seq.prompt_tokens >= max_model_len_) {
            // No room left to generate anything: finished before the first token.
            emit(seq, 0, "length", out);
            backend_->release(seq);
            waiting_.pop_front();
            continue;
        }
        running_.push_back(std::move(waiting_.front()));
        waiting_.pop_front();
    }
}

void StepLoop::step(TokenOutputs& out) {
    admit_waiting(out);
    if (!running_.empty()) {
        batch_.clear();
        for (auto& s : running_) batch_.push_back(s.get());
        pieces_.resize(batch_.size());
        for (auto& p : pieces_) p.clear();
        backend_->step(batch_, pieces_);
        ++steps_;
        for (size_t i = 0; i < batch_.size(); ++i) {
            Sequence& seq = *batch_[i];
            seq.text += pieces_[i];
            ++seq.generated;
            const char* finish = "";
            if (size_t at = find_stop(seq, pieces_[i].size()); at != std::string::npos) {
                seq.text.resize(at);
                finish = "stop";
            } else if (seq.generated >= seq.max_tokens || seq.prompt_tokens + seq.generated >= max_model_len_) {
                finish = "length";
            }
            emit(seq, 1, finish, out);
            seq.finished = *finish != '\0';
        }
        std::erase_if(running_, [&](const std::unique_ptr<Sequence>& s) {
            if (!s->finished) return false;
            backend_->release(*s);
            return true;
        });
    }
}

}  // namespace dpengine::engine
