// Unit tests for lockstep mode's loop (daemon/engine/lockstep.hpp) with a scripted group in
// place of gloo: what each rank does with the group's answer.
#include "engine/lockstep.hpp"
#include "engine/synthetic.hpp"

#include <catch2/catch.hpp>

#include <deque>

using namespace dpengine;
using namespace dpengine::engine;

namespace {

// Answers each all-reduce with the next scripted "other ranks with work" plus this rank's own.
struct ScriptedGroup : DpGroup {
    std::deque<int64_t>* others;
    std::vector<int64_t>* seen;
    Result<int64_t> all_reduce_sum(int64_t value) override {
        seen->push_back(value);
        if (others->empty()) return Error{"peer closed the connection", "group-failed"};
        int64_t sum = value + others->front();
        others->pop_front();
        return sum;
    }
};

struct NoRendezvous : RendezvousChannel {
    Status set(const std::string&, const std::string&) override { return Ok{}; }
    Result<std::string> get(const std::string&, std::chrono::steady_clock::time_point) override {
        return std::string();
    }
};

struct RecordingLink : Lockstep::Link {
    std::vector<wire::Message> sent;
    NoRendezvous channel;
    void send(const wire::Message& m) override { sent.push_back(m); }
    RendezvousChannel& rendezvous(uint64_t) override { return channel; }
};

struct Fixture {
    std::deque<int64_t> others;
    std::vector<int64_t> seen;
    RecordingLink link;
    StepLoop loop{std::make_unique<SyntheticBackend>(std::chrono::nanoseconds(0)), 8, 8192};
    TokenOutputs out;
    Lockstep lockstep;

    explicit Fixture(uint32_t interval = 1, uint32_t rank = 1)
        : lockstep(Lockstep::Settings{rank, interval, std::chrono::milliseconds(100), "127.0.0.1"},
                   [this](const GroupSpec&, RendezvousChannel&) -> Result<std::unique_ptr<DpGroup>> {
                       auto g = std::make_unique<ScriptedGroup>();
                       g->others = &others;
                       g->seen = &seen;
                       return std::unique_ptr<DpGroup>(std::move(g));
                   }) {
        lockstep.on_group_form(wire::GroupForm{3, "gloo", {0, 1, 2}, 10});
    }
    void advance() {
        out.items.clear();
        lockstep.advance(loop, out, link);
    }
    template <class T>
    std::vector<T> sent_of() const {
        std::vector<T> v;
        for (const auto& m : link.sent)
            if (auto* x = std::get_if<T>(&m)) v.push_back(*x);
        return v;
    }
};

SequenceRequest request(uint64_t id, uint32_t tokens) {
    return SequenceRequest{.id = id, .prompt = "p", .max_tokens = tokens};
}

}  // namespace

TEST_CASE("lockstep: an idle rank takes dummy steps while another rank has work", "[lockstep]") {
    Fixture f;
    f.others = {1, 1, 1, 0};
    for (int i = 0; i < 4; ++i) f.advance();
    CHECK(f.seen == std::vector<int64_t>{0, 0, 0, 0});
    CHECK(f.loop.dummy_steps() == 3);
    auto state = f.lockstep.report();
    CHECK(state.state == "paused");
    CHECK(state.wave == 11);  // wave 10 ended
    CHECK(state.dummy_steps == 3);
    CHECK(f.sent_of<wire::GroupState>().size() == 1);  // "running" on joining; member 1 does not announce pauses
}

TEST_CASE("lockstep: work that arrives while paused asks the head for the next wave", "[lockstep]") {
    Fixture f;
    f.others = {0};
    f.advance();  // wave 10 ends at once
    REQUIRE(f.lockstep.report().state == "paused");
    f.advance();
    CHECK(f.seen.size() == 1);  // paused and idle: no collective
    f.loop.add(request(1, 2));
    CHECK(f.lockstep.wants_to_run(f.loop));
    f.others = {0, 0, 0};
    f.advance();
    auto waves = f.sent_of<wire::StartWave>();
    REQUIRE(waves.size() == 1);
    CHECK(waves[0].wave == 11);
    f.advance();
    f.advance();  // two real steps finish the request; then the group sees no work
    CHECK(f.lockstep.report().steps == 2);
    CHECK(f.lockstep.report().state == "paused");
    CHECK(f.lockstep.report().wave == 12);
}

TEST_CASE("lockstep: a START_WAVE that overtakes the end of the wave is kept", "[lockstep]") {
    Fixture f;
    f.lockstep.on_start_wave(11);  // the head's wake-up for the next wave, early
    f.others = {0, 1, 0};
    f.advance();  // wave 10 ends
    CHECK(f.lockstep.report().state == "paused");
    CHECK(f.lockstep.wants_to_run(f.loop));
    f.advance();  // wave 11 runs: a dummy step
    CHECK(f.loop.dummy_steps() == 1);
    CHECK(f.sent_of<wire::StartWave>().empty());
}

TEST_CASE("lockstep: the all-reduce runs once per sync_interval steps", "[lockstep]") {
    Fixture f(4);
    f.others = {1, 0};
    for (int i = 0; i < 5; ++i) f.advance();
    CHECK(f.seen.size() == 2);
    CHECK(f.loop.dummy_steps() == 4);
    CHECK(f.lockstep.report().state == "paused");
}

TEST_CASE("lockstep: a failed collective stops stepping and reports it, a newer group resumes", "[lockstep]") {
    Fixture f;
    f.loop.add(request(1, 5));
    f.others = {};  // the first all-reduce fails
    f.advance();
    auto states = f.sent_of<wire::GroupState>();
    REQUIRE(!states.empty());
    CHECK(states.back().state == "failed");
    CHECK(states.back().error == "peer closed the connection");
    CHECK(f.lockstep.report().steps == 0);
    CHECK_FALSE(f.lockstep.wants_to_run(f.loop));
    f.lockstep.on_group_form(wire::GroupForm{3, "gloo", {0, 1, 2}, 12});  // stale epoch: ignored
    CHECK_FALSE(f.lockstep.wants_to_run(f.loop));
    f.lockstep.on_group_form(wire::GroupForm{4, "gloo", {0, 1}, 12});
    f.others = {0, 0, 0, 0, 0};
    for (int i = 0; i < 5; ++i) f.advance();
    CHECK(f.lockstep.report().steps == 5);  // the request kept its place and finished
    CHECK(f.lockstep.report().group_epoch == 4);
}
