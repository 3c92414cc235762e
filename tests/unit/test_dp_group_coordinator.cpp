// The head's DP group coordinator (head/dp_group_coordinator.hpp), driven through its Peers:
// formation on a change of the serving ranks, the rendezvous store, waves. No sockets.
#include "head/dp_group_coordinator.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>

#include <utility>
#include <vector>

using namespace dpengine;
using namespace std::chrono_literals;

namespace {

// A registry of `size` ranks, every one connected; records what the coordinator sends.
struct FakeRanks {
    explicit FakeRanks(uint32_t size) : infos(size) {
        for (uint32_t r = 0; r < size; ++r) infos[r].rank = r;
        config.data_parallel.dp_sync = "lockstep";
    }
    DpGroupCoordinator::Peers peers() {
        DpGroupCoordinator::Peers p;
        p.send = [this](uint32_t rank, const wire::Message& message) {
            sent.emplace_back(rank, message);
            return true;
        };
        p.serving_ranks = [this] { return serving; };
        p.epoch = [this] { return epoch; };
        p.bump_epoch = [this] { return ++epoch; };
        p.info = [this](uint32_t rank) { return rank < infos.size() ? &infos[rank] : nullptr; };
        return p;
    }
    template <typename T>
    std::vector<std::pair<uint32_t, T>> sent_of() const {
        std::vector<std::pair<uint32_t, T>> out;
        for (const auto& [rank, message] : sent) {
            if (auto* m = std::get_if<T>(&message)) out.emplace_back(rank, *m);
        }
        return out;
    }
    Config config;
    std::vector<RankInfo> infos;
    std::vector<uint32_t> serving;
    uint64_t epoch = 1;
    std::vector<std::pair<uint32_t, wire::Message>> sent;
};

}  // namespace

TEST_CASE("the coordinator forms a new group when the serving ranks change", "[dp_group]") {
    boost::asio::io_context io;
    FakeRanks ranks(3);
    DpGroupCoordinator group(io, ranks.config, ranks.peers());
    REQUIRE(group.lockstep());

    wire::Config reply;
    group.fill_group_config(reply);
    CHECK(reply.sync == "lockstep");
    CHECK(reply.group_kind == "gloo");
    CHECK(reply.group_rendezvous == "head");

    // No serving ranks and no group: nothing to form.
    group.regroup(false);
    CHECK(ranks.epoch == 1);
    CHECK(ranks.sent.empty());

    ranks.serving = {0, 1};
    group.schedule_regroup(false, 1ms);
    group.schedule_regroup(false, 1ms);  // changes that come together make one epoch
    io.run_for(50ms);
    CHECK(ranks.epoch == 2);
    auto forms = ranks.sent_of<wire::GroupForm>();
    REQUIRE(forms.size() == 2);
    CHECK(forms[0].first == 0);
    CHECK(forms[1].first == 1);
    CHECK(forms[0].second.group_epoch == 2);
    CHECK(forms[0].second.members == std::vector<uint32_t>{0, 1});
    CHECK(forms[0].second.kind == "gloo");
    CHECK(forms[0].second.wave == 1);
    CHECK(ranks.infos[1].group_state == "forming");
    CHECK(ranks.infos[1].group_epoch == 2);
    CHECK(ranks.infos[2].group_state.empty());
    CHECK(group.members() == std::vector<uint32_t>{0, 1});

    // The same members: no new epoch, unless forced (a member reported the group failed).
    ranks.sent.clear();
    group.regroup(false);
    CHECK(ranks.epoch == 2);
    CHECK(ranks.sent.empty());
    wire::GroupState failed{2, "gloo", "failed", 1, 0, 0, 0, "peer gone"};
    CHECK(group.on_group_message(ranks.infos[0], failed));
    io.restart();
    io.run_for(200ms);
    CHECK(ranks.epoch == 3);
    CHECK(ranks.sent_of<wire::GroupForm>().size() == 2);

    // After shutdown nothing forms.
    ranks.sent.clear();
    ranks.serving = {0, 1, 2};
    group.schedule_regroup(false, 1ms);
    group.shutdown();
    io.restart();
    io.run_for(20ms);
    CHECK(ranks.epoch == 3);
    CHECK(ranks.sent.empty());
}

TEST_CASE("the rendezvous store is set once, answers gets and wakes waiters", "[dp_group]") {
    boost::asio::io_context io;
    FakeRanks ranks(3);
    DpGroupCoordinator group(io, ranks.config, ranks.peers());
    ranks.serving = {0, 1};
    group.regroup(false);
    REQUIRE(ranks.epoch == 2);
    ranks.sent.clear();

    // A get before the set waits (no answer yet).
    CHECK(group.on_group_message(ranks.infos[1], wire::GroupKv{2, "addr0", std::nullopt}));
    CHECK(ranks.sent.empty());
    // The set answers the waiter.
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{2, "addr0", std::string("tcp://a")}));
    auto values = ranks.sent_of<wire::GroupValue>();
    REQUIRE(values.size() == 1);
    CHECK(values[0].first == 1);
    CHECK(values[0].second.found);
    CHECK(values[0].second.value == "tcp://a");
    CHECK(values[0].second.group_epoch == 2);

    // First set wins.
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[1], wire::GroupKv{2, "addr0", std::string("tcp://b")}));
    CHECK(ranks.sent.empty());
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{2, "addr0", std::nullopt}));
    values = ranks.sent_of<wire::GroupValue>();
    REQUIRE(values.size() == 1);
    CHECK(values[0].first == 0);
    CHECK(values[0].second.value == "tcp://a");

    // An old epoch's get, or a rank outside the group: "not found" at once.
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{1, "addr0", std::nullopt}));
    CHECK(group.on_group_message(ranks.infos[2], wire::GroupKv{2, "addr0", std::nullopt}));
    values = ranks.sent_of<wire::GroupValue>();
    REQUIRE(values.size() == 2);
    CHECK_FALSE(values[0].second.found);
    CHECK(values[0].second.group_epoch == 1);
    CHECK(values[1].first == 2);
    CHECK_FALSE(values[1].second.found);

    // A value too large fills nothing.
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{2, "big", std::string(5000, 'x')}));
    auto errors = ranks.sent_of<wire::ErrorReply>();
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].second.code == "group-store-full");

    // A new epoch empties the store.
    ranks.serving = {0};
    group.regroup(false);
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{3, "addr0", std::nullopt}));
    CHECK(ranks.sent.empty());  // waits again

    // Not the coordinator's messages: not handled.
    CHECK_FALSE(group.on_group_message(ranks.infos[0], wire::Heartbeat{}));
}

TEST_CASE("a member's START_WAVE is relayed to the group, and a paused group wakes", "[dp_group]") {
    boost::asio::io_context io;
    FakeRanks ranks(3);
    DpGroupCoordinator group(io, ranks.config, ranks.peers());
    ranks.serving = {0, 2};
    group.regroup(false);  // starts wave 1
    ranks.sent.clear();

    CHECK(group.on_group_message(ranks.infos[2], wire::StartWave{2}));
    auto waves = ranks.sent_of<wire::StartWave>();
    REQUIRE(waves.size() == 2);
    CHECK(waves[0].first == 0);
    CHECK(waves[1].first == 2);
    CHECK(waves[0].second.wave == 2);
    CHECK(group.wave_started() == 2);

    // An old wave, or one from outside the group, is not relayed.
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[0], wire::StartWave{2}));
    CHECK(group.on_group_message(ranks.infos[1], wire::StartWave{5}));
    CHECK(ranks.sent.empty());

    // The group pauses after wave 2; a request wakes it with wave 3.
    wire::GroupState paused{ranks.epoch, "gloo", "paused", 3, 10, 4, 0, ""};
    CHECK(group.on_group_message(ranks.infos[0], paused));
    CHECK(ranks.infos[0].group_state == "paused");
    CHECK(ranks.infos[0].lockstep_steps == 10);
    CHECK(group.paused());
    group.wake_group();
    waves = ranks.sent_of<wire::StartWave>();
    REQUIRE(waves.size() == 2);
    CHECK(waves[0].second.wave == 3);
    CHECK_FALSE(group.paused());
    ranks.sent.clear();
    group.wake_group();  // awake: nothing more
    CHECK(ranks.sent.empty());

    // A rank may not send the head's messages.
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupForm{}));
    auto errors = ranks.sent_of<wire::ErrorReply>();
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].second.code == "unexpected-type");
}
