// The org.dpengine1 service on the system bus (or $DBUS_SYSTEM_BUS_ADDRESS): the connection that
// serves the objects of manager_bus, rank_bus and node_bus (thin sd-bus adapters over
// NodeControl). Runs on the daemon's event loop. When no bus is reachable the
// daemon goes on serving and this keeps trying to connect in the background, so a bus restart
// never stops inference.
#pragma once

#include "bus/manager_bus.hpp"
#include "bus/node_bus.hpp"
#include "bus/node_control.hpp"
#include "bus/rank_bus.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include <systemd/sd-bus.h>

#include <memory>
#include <vector>

namespace dpengine {

class BusService {
public:
    BusService(boost::asio::io_context& io, NodeControl& node);
    ~BusService();
    BusService(const BusService&) = delete;
    BusService& operator=(const BusService&) = delete;

    void start();
    // Emits PropertiesChanged for the rank's object and the manager's counters.
    void rank_changed(uint32_t rank);
    // A node registered or was lost, or ranks moved: the manager's Epoch may have changed.
    void nodes_changed();

    // The interface description, as --bus-introspect prints it: written from the vtables the
    // bus serves.
    static const char* introspection_xml();

private:
    struct BusDeleter {
        void operator()(sd_bus* bus) const { sd_bus_flush_close_unref(bus); }
    };
    struct SlotDeleter {
        void operator()(sd_bus_slot* slot) const { sd_bus_slot_unref(slot); }
    };

    void connect();
    void schedule_reconnect();
    void disconnected(int error);
    void process();
    void arm();

    boost::asio::io_context& io_;
    bus::ManagerBus manager_;
    bus::RankBus ranks_;
    bus::NodeBus nodes_;
    std::unique_ptr<sd_bus, BusDeleter> bus_;
    std::vector<std::unique_ptr<sd_bus_slot, SlotDeleter>> slots_;  // objects and enumerators
    boost::asio::posix::stream_descriptor fd_;
    boost::asio::steady_timer timer_;
    uint64_t generation_ = 0;
    bool warned_ = false;
};

}  // namespace dpengine
