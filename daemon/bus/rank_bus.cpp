#include "bus/rank_bus.hpp"

#include "bus/api.hpp"

#include <charconv>
#include <string_view>
#include <vector>

namespace dpengine::bus {

std::string group_kind_of(const RankInfo& rank) {
    if (!rank.activity_known) return "";
    return rank.group_kind.empty() ? "none" : rank.group_kind;
}

std::optional<uint32_t> rank_of_path(const char* path) {
    std::string_view p = path, prefix = rank_path_prefix;
    if (p.size() <= prefix.size() + 1 || p.substr(0, prefix.size()) != prefix || p[prefix.size()] != '/')
        return std::nullopt;
    auto digits = p.substr(prefix.size() + 1);
    uint32_t rank = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), rank);
    if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
    return rank;
}

namespace {

int append_state(sd_bus_message* reply, const RankInfo& rank) {
    return sd_bus_message_append_basic(reply, 's', to_string(rank.state));
}

int append_group_kind(sd_bus_message* reply, const RankInfo& rank) {
    return sd_bus_message_append_basic(reply, 's', group_kind_of(rank).c_str());
}

// What a rank is and does. Counters change with every request, the DP group and the engine's
// activity with every heartbeat: read them, no signal.
const Property<RankInfo> rank_properties[] = {
    member<&RankInfo::rank>("Rank", constant),
    {"State", "s", signals_changes, append_state},
    member<&RankInfo::node>("Node", signals_changes),
    member<&RankInfo::device>("Device", signals_changes),
    member<&RankInfo::pid>("Pid", signals_changes),
    member<&RankInfo::in_flight>("InFlight", read_when_needed),
    member<&RankInfo::waiting>("Queued", read_when_needed),
    member<&RankInfo::served>("Served", read_when_needed),
    member<&RankInfo::restarts>("Restarts", signals_changes),
    member<&RankInfo::last_error>("LastError", signals_changes),
    member<&RankInfo::reason>("Reason", signals_changes),
    {"GroupKind", "s", read_when_needed, append_group_kind},
    member<&RankInfo::group_epoch>("GroupEpoch", read_when_needed),
    member<&RankInfo::wave>("Wave", read_when_needed),
    member<&RankInfo::memory_used>("MemoryUsed", read_when_needed),
    member<&RankInfo::steps_per_second>("StepsPerSecond", read_when_needed),
    member<&RankInfo::dummy_step_share>("DummyStepShare", read_when_needed),
};

}  // namespace

std::span<const Property<RankInfo>> RankBus::properties() { return rank_properties; }

int RankBus::find(sd_bus*, const char* path, const char*, void* userdata, void** found, sd_bus_error*) {
    auto& self = *static_cast<RankBus*>(userdata);
    auto rank = rank_of_path(path);
    return self.found(rank ? self.node_.rank_info(*rank) : std::nullopt, found);
}

int RankBus::enumerate(sd_bus*, const char*, void* userdata, char*** paths, sd_bus_error*) {
    std::vector<std::string> list;
    for (const auto& info : static_cast<RankBus*>(userdata)->node_.ranks()) {
        list.push_back(std::string(rank_path_prefix) + "/" + std::to_string(info.rank));
    }
    return path_list(list, paths);
}

}  // namespace dpengine::bus
