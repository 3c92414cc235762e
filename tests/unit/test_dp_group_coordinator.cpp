// The head's DP group coordinator (head/dp_group_coordinator.hpp), driven through its Peers:
// formation on a change of the serving ranks, the rendezvous store, waves. No sockets.
#include "head/dp_group_coordinator.hpp"

#include <boost/asio/io_context.hpp>
#include <catch2/catch.hpp>

#include <thread>
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
        p.fail = [this](uint32_t rank, const std::string& reason, const std::string& code) {
            failed.push_back({rank, reason, code});
        };
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
    struct Failure {
        uint32_t rank;
        std::string reason, code;
    };
    std::vector<Failure> failed;
};

wire::GroupKv set_key(uint64_t epoch, const std::string& key, const std::string& value) {
    return wire::GroupKv{epoch, key, value};
}

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
    CHECK(group.on_group_message(ranks.infos[1], wire::GroupKv{2, "pair-0-1", std::nullopt}));
    CHECK(ranks.sent.empty());
    // The set answers the waiter.
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{2, "pair-0-1", std::string("tcp://a")}));
    auto values = ranks.sent_of<wire::GroupValue>();
    REQUIRE(values.size() == 1);
    CHECK(values[0].first == 1);
    CHECK(values[0].second.found);
    CHECK(values[0].second.value == "tcp://a");
    CHECK(values[0].second.group_epoch == 2);

    // First set wins.
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{2, "pair-0-1", std::string("tcp://b")}));
    CHECK(ranks.sent.empty());
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{2, "pair-0-1", std::nullopt}));
    values = ranks.sent_of<wire::GroupValue>();
    REQUIRE(values.size() == 1);
    CHECK(values[0].first == 0);
    CHECK(values[0].second.value == "tcp://a");

    // An old epoch's get, or a rank outside the group: "not found" at once.
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{1, "pair-0-1", std::nullopt}));
    CHECK(group.on_group_message(ranks.infos[2], wire::GroupKv{2, "pair-0-1", std::nullopt}));
    values = ranks.sent_of<wire::GroupValue>();
    REQUIRE(values.size() == 2);
    CHECK_FALSE(values[0].second.found);
    CHECK(values[0].second.group_epoch == 1);
    CHECK(values[1].first == 2);
    CHECK_FALSE(values[1].second.found);

    // A value too large fills nothing.
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{2, "pair-0-1", std::string(5000, 'x')}));
    auto errors = ranks.sent_of<wire::ErrorReply>();
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].second.code == "group-store-full");

    // A new epoch empties the store.
    ranks.serving = {0};
    group.regroup(false);
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[0], wire::GroupKv{3, "pair-0-1", std::nullopt}));
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

TEST_CASE("each rendezvous key has one owner, named by the key", "[dp_group]") {
    // gloo: "pair-I-J" is member I's address for its connection with member J.
    CHECK(group_key_owner("gloo", "pair-0-1", 3) == 0u);
    CHECK(group_key_owner("gloo", "pair-2-0", 3) == 2u);
    CHECK(group_key_owner("gloo", "pair-1-0", 2) == 1u);
    for (const char* key : {"pair-1-1", "pair-3-0", "pair-0-3", "pair-01-1", "pair-+1-0", "pair--1", "pair-0-1-2",
                            "pair-0", "pair-", "pair-4294967296-0", "addr0", "nccl-unique-id", ""}) {
        CAPTURE(key);
        CHECK_FALSE(group_key_owner("gloo", key, 3));
    }
    // NCCL: one key, member 0's.
    CHECK(group_key_owner("nccl", "nccl-unique-id", 2) == 0u);
    CHECK_FALSE(group_key_owner("nccl", "pair-0-1", 2));
    CHECK_FALSE(group_key_owner("other", "pair-0-1", 2));
}

TEST_CASE("the head stores a rendezvous key only from the member that owns it", "[dp_group]") {
    boost::asio::io_context io;
    FakeRanks ranks(4);
    DpGroupCoordinator group(io, ranks.config, ranks.peers());
    ranks.serving = {0, 1, 3};  // rank 3 is member 2
    group.regroup(false);
    const uint64_t epoch = ranks.epoch;
    ranks.sent.clear();

    // Rank 1 waits for member 0's address; member 2 (rank 3) tries to publish it, and a key the
    // protocol does not define: both refused, nothing stored, nobody answered.
    CHECK(group.on_group_message(ranks.infos[1], wire::GroupKv{epoch, "pair-0-1", std::nullopt}));
    CHECK(group.on_group_message(ranks.infos[3], set_key(epoch, "pair-0-1", "forged")));
    CHECK(group.on_group_message(ranks.infos[3], set_key(epoch, "anything", "forged")));
    CHECK(group.on_group_message(ranks.infos[0], set_key(epoch, "pair-1-0", "forged")));
    CHECK(ranks.sent_of<wire::GroupValue>().empty());
    auto errors = ranks.sent_of<wire::ErrorReply>();
    REQUIRE(errors.size() == 3);
    CHECK(errors[0].first == 3);
    CHECK(errors[0].second.code == "group-key-not-owned");
    CHECK(errors[0].second.message.find("'pair-0-1'") != std::string::npos);
    CHECK(errors[0].second.message.find("member 0 (rank 0)") != std::string::npos);
    CHECK(errors[1].first == 3);
    CHECK(errors[2].first == 0);
    CHECK(errors[2].second.message.find("member 1 (rank 1)") != std::string::npos);

    // The owner's value is the one the waiter gets, and stays.
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[0], set_key(epoch, "pair-0-1", "real")));
    auto values = ranks.sent_of<wire::GroupValue>();
    REQUIRE(values.size() == 1);
    CHECK(values[0].first == 1);
    CHECK(values[0].second.value == "real");
    CHECK(group.on_group_message(ranks.infos[3], set_key(epoch, "pair-0-1", "forged")));
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[1], wire::GroupKv{epoch, "pair-0-1", std::nullopt}));
    values = ranks.sent_of<wire::GroupValue>();
    REQUIRE(values.size() == 1);
    CHECK(values[0].second.value == "real");
    // Member 2 publishes its own keys (named by its place in the group, not its rank).
    CHECK(group.on_group_message(ranks.infos[3], set_key(epoch, "pair-2-0", "three")));
    CHECK(ranks.sent_of<wire::ErrorReply>().empty());
}

TEST_CASE("the NCCL unique id is accepted from member 0 only", "[dp_group]") {
    boost::asio::io_context io;
    FakeRanks ranks(3);
    ranks.config.data_parallel.group = "nccl";
    DpGroupCoordinator group(io, ranks.config, ranks.peers());
    ranks.serving = {1, 2};  // member 0 is rank 1
    group.regroup(false);
    const uint64_t epoch = ranks.epoch;
    ranks.sent.clear();
    CHECK(group.on_group_message(ranks.infos[2], wire::GroupKv{epoch, "nccl-unique-id", std::nullopt}));
    CHECK(group.on_group_message(ranks.infos[2], set_key(epoch, "nccl-unique-id", "forged")));
    auto errors = ranks.sent_of<wire::ErrorReply>();
    REQUIRE(errors.size() == 1);
    CHECK(errors[0].second.code == "group-key-not-owned");
    CHECK(ranks.sent_of<wire::GroupValue>().empty());
    CHECK(group.on_group_message(ranks.infos[1], set_key(epoch, "nccl-unique-id", "abcd")));
    auto values = ranks.sent_of<wire::GroupValue>();
    REQUIRE(values.size() == 1);
    CHECK(values[0].first == 2);
    CHECK(values[0].second.value == "abcd");
}

TEST_CASE("a member that withholds its keys in formations in a row, for long, is named and failed", "[dp_group]") {
    boost::asio::io_context io;
    FakeRanks ranks(4);
    ranks.config.data_parallel.group_timeout = 0.05;
    // Stalling is tolerated for heartbeat_timeout + 2 x group_timeout: 0.15 s here.
    ranks.config.handshake.heartbeat_timeout = 0.05;
    DpGroupCoordinator group(io, ranks.config, ranks.peers());
    auto publish_all = [&](uint32_t rank, uint32_t index, uint32_t size) {
        for (uint32_t peer = 0; peer < size; ++peer) {
            if (peer == index) continue;
            std::string key = "pair-" + std::to_string(index) + "-" + std::to_string(peer);
            CHECK(group.on_group_message(ranks.infos[rank], set_key(ranks.epoch, key, "addr")));
        }
    };
    // Runs the timers for `time` (run_for returns early once nothing is pending).
    auto run = [&](std::chrono::milliseconds time) {
        const auto until = std::chrono::steady_clock::now() + time;
        io.restart();
        io.run_for(time);
        std::this_thread::sleep_until(until);
    };

    // Every member publishes: the formation's deadline passes without a failure.
    ranks.serving = {0, 1, 2};
    group.regroup(false);
    publish_all(0, 0, 3);
    publish_all(1, 1, 3);
    publish_all(2, 2, 3);
    run(150ms);
    CHECK(ranks.failed.empty());

    // Formations superseded before their deadline are not judged (rank 3 joins at once).
    ranks.serving = {0, 1, 2, 3};
    group.regroup(false);
    ranks.serving = {0, 1, 3};
    group.regroup(false);
    // Members 0 and 2 (ranks 0 and 3) publish; member 1 (rank 1) one key of two, and one it
    // does not own, which is no excuse. Once is not enough to fail it (it may have been
    // finishing the old group's collective).
    publish_all(0, 0, 3);
    publish_all(3, 2, 3);
    CHECK(group.on_group_message(ranks.infos[1], set_key(ranks.epoch, "pair-1-0", "addr")));
    CHECK(group.on_group_message(ranks.infos[1], set_key(ranks.epoch, "pair-0-2", "addr")));
    run(150ms);
    CHECK(ranks.failed.empty());

    // A member that is late once and prompt in the next formation is not failed.
    group.regroup(true);  // the members reported the failed rendezvous
    publish_all(0, 0, 3);
    publish_all(1, 1, 3);
    publish_all(3, 2, 3);
    run(150ms);
    CHECK(ranks.failed.empty());

    // Stalling two formations in a row, for longer than tolerated, fails it: here the second
    // ends when the members' failure reports re-form the group, before the deadline's timer.
    group.regroup(true);
    run(150ms);                   // epoch E: nobody publishes
    CHECK(ranks.failed.empty());  // every member's first stall: nobody failed
    // Two stalls within the tolerated time are not enough either.
    ranks.config.handshake.heartbeat_timeout = 10;
    group.regroup(true);
    std::this_thread::sleep_for(60ms);
    group.regroup(true);
    CHECK(ranks.failed.empty());
    ranks.config.handshake.heartbeat_timeout = 0.05;
    // Members 0 and 2 publish in this epoch; member 1 still one key of two.
    const uint64_t epoch = ranks.epoch;
    publish_all(0, 0, 3);
    publish_all(3, 2, 3);
    CHECK(group.on_group_message(ranks.infos[1], set_key(epoch, "pair-1-0", "addr")));
    std::this_thread::sleep_for(60ms);
    ranks.serving = {0, 3};  // what the registry reports once rank 1 is failed
    group.regroup(true);
    REQUIRE(ranks.failed.size() == 1);
    CHECK(ranks.failed[0].rank == 1);
    CHECK(ranks.failed[0].code == "group-stalled");
    CAPTURE(ranks.failed[0].reason);
    CHECK(ranks.failed[0].reason.find("'pair-1-2'") != std::string::npos);
    CHECK(ranks.failed[0].reason.find("'pair-1-0'") == std::string::npos);
    CHECK(ranks.failed[0].reason.find("epoch " + std::to_string(epoch)) != std::string::npos);
    CHECK(ranks.failed[0].reason.find("data_parallel.group_timeout") != std::string::npos);
    CHECK(group.members() == std::vector<uint32_t>{0, 3});  // the new group is without it

    // A group of one owes nothing.
    ranks.failed.clear();
    ranks.serving = {0};
    group.regroup(false);
    run(150ms);
    group.regroup(true);
    run(150ms);
    CHECK(ranks.failed.empty());

    // NCCL: member 0 owes the unique id, the others nothing; the deadline's timer judges.
    ranks.config.data_parallel.group = "nccl";
    ranks.serving = {2, 3};
    group.regroup(false);
    run(150ms);
    CHECK(ranks.failed.empty());
    group.regroup(true);
    run(150ms);
    REQUIRE(ranks.failed.size() == 1);
    CHECK(ranks.failed[0].rank == 2);
    CHECK(ranks.failed[0].reason.find("'nccl-unique-id'") != std::string::npos);

    // After shutdown nothing is judged.
    ranks.failed.clear();
    ranks.serving = {0, 1};
    group.regroup(false);
    run(150ms);
    group.regroup(true);
    group.shutdown();
    run(150ms);
    CHECK(ranks.failed.empty());
}
