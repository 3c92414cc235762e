// /org/dpengine1/rank/N, org.dpengine1.Rank: one object per rank this node knows, each read from
// that rank's RankInfo alone.
#pragma once

#include "bus/object_table.hpp"

#include <optional>
#include <span>
#include <string>

namespace dpengine::bus {

// The group kind the bus and status show: "none" without a DP group, "" where this daemon does
// not know (a headless node before the head reported it).
std::string group_kind_of(const RankInfo& rank);

// The rank an object path names: /org/dpengine1/rank/N -> N.
std::optional<uint32_t> rank_of_path(const char* path);

class RankBus : public ListedObjects<RankInfo> {
public:
    using Snapshot = RankInfo;
    using ListedObjects::ListedObjects;

    static std::span<const Property<Snapshot>> properties();
    // userdata: the RankBus.
    static int find(sd_bus*, const char* path, const char*, void* userdata, void** found, sd_bus_error*);
    static int enumerate(sd_bus*, const char*, void* userdata, char*** paths, sd_bus_error*);
};

}  // namespace dpengine::bus
