// dpctl's side of org.dpengine1: a connection to the system bus ($DBUS_SYSTEM_BUS_ADDRESS is
// honoured) and typed calls. Every failure is thrown as a Failure whose exit status and
// message say what happened and how to fix it (see verbs.hpp).
#pragma once

#include "bus/api.hpp"

#include <systemd/sd-bus.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace dpctl {

// ---- RAII for the sd-bus types ----

struct BusUnref {
    void operator()(sd_bus* bus) const { sd_bus_flush_close_unref(bus); }
};
using BusPtr = std::unique_ptr<sd_bus, BusUnref>;

struct MessageUnref {
    void operator()(sd_bus_message* m) const { sd_bus_message_unref(m); }
};
using MessagePtr = std::unique_ptr<sd_bus_message, MessageUnref>;

class BusError {
public:
    BusError() = default;
    ~BusError() { sd_bus_error_free(&error_); }
    BusError(const BusError&) = delete;
    BusError& operator=(const BusError&) = delete;

    sd_bus_error* get() { return &error_; }
    bool is_set() const { return sd_bus_error_is_set(&error_); }
    std::string name() const { return error_.name ? error_.name : ""; }
    std::string message() const { return error_.message ? error_.message : ""; }

private:
    sd_bus_error error_ = SD_BUS_ERROR_NULL;
};

// ---- what the daemon reports ----

using ManagerInfo = dpengine::bus::ManagerProperties;

// One entry of ListRanks() -> a(usssuuuttss).
struct RankRow {
    uint32_t rank = 0;
    std::string state;
    std::string node;
    std::string device;
    uint32_t pid = 0;
    uint32_t in_flight = 0;
    uint32_t queued = 0;
    uint64_t served = 0;
    uint64_t restarts = 0;
    std::string last_error;
    std::string reason;
    // From ListRankActivity() -> a(ustttdd) (BusClient::add_activity). activity_known false:
    // this daemon does not know them (a headless node, or a daemon without the method).
    bool activity_known = false;
    std::string group_kind;  // "none" without a DP group
    uint64_t group_epoch = 0;
    uint64_t wave = 0;
    uint64_t memory_used = 0;  // bytes; 0: not measured
    double steps_per_second = 0;
    double dummy_step_share = 0;
};

// One entry of ListNodes() -> a(ssssuuutt).
struct NodeRow {
    std::string name;
    std::string role;
    std::string state;
    std::string address;
    uint32_t start_rank = 0;
    uint32_t count = 0;
    uint32_t wanted = 0;
    uint64_t since = 0;  // Unix seconds
    uint64_t incarnation = 0;
};

class BusClient {
public:
    // Connects to the system bus; throws Failure (not running) when there is none.
    static BusClient connect();

    ManagerInfo manager();
    std::vector<RankRow> ranks();
    // Fills the DP group and activity fields of `rows` (ListRankActivity); leaves them unknown
    // where the daemon does not know them.
    void add_activity(std::vector<RankRow>& rows);
    std::vector<NodeRow> nodes();
    // AssignRanks(node, start, count); `what` as for manage().
    void assign(const std::string& node, uint32_t start, uint32_t count, const std::string& what);
    // A Manager method that changes something, with a rank argument or none; `what` describes
    // it for error messages ("stopping rank 2").
    void manage(const char* method, uint32_t rank, const std::string& what);
    void manage(const char* method, const std::string& what);

    // Subscribes to PropertiesChanged of these ranks' objects, and to the daemon's bus name
    // changing owner (it stopped or restarted: the next read says so), for wait_for_change().
    // `what` describes the wait for error messages.
    void watch_ranks(const std::vector<uint32_t>& ranks, const std::string& what);
    // Reads the bus until a watched signal arrives (true; signals that came during other calls
    // count) or `deadline` passes (false).
    bool wait_for_change(std::chrono::steady_clock::time_point deadline, const std::string& what);

private:
    explicit BusClient(BusPtr bus) : bus_(std::move(bus)), changed_(std::make_unique<bool>(false)) {}
    [[noreturn]] void fail(const std::string& what, int r, const BusError& error, bool mutating) const;

    BusPtr bus_;
    // Set by the watches' callbacks: on the heap, where a moved BusClient leaves it.
    std::unique_ptr<bool> changed_;
};

}  // namespace dpctl
