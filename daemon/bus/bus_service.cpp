#include "bus/bus_service.hpp"

#include "bus/api.hpp"
#include "core/log.hpp"

#include <boost/asio/post.hpp>

#include <poll.h>
#include <time.h>

#include <cstring>
#include <string>
#include <vector>

namespace dpengine {

namespace asio = boost::asio;

const char* BusService::introspection_xml() {
    static const std::string xml = std::string("<node name=\"") + bus::manager_path + "\">\n" +
        bus::interface_xml(bus::manager_interface, bus::vtable<bus::ManagerBus>()) +
        bus::interface_xml(bus::node_interface, bus::vtable<bus::NodeBus>()) +
        bus::interface_xml(bus::rank_interface, bus::vtable<bus::RankBus>()) + "</node>\n";
    return xml.c_str();
}

BusService::BusService(asio::io_context& io, NodeControl& node)
    : io_(io), manager_(node), ranks_(node), nodes_(node), fd_(io), timer_(io) {}

BusService::~BusService() {
    if (fd_.is_open()) fd_.release();  // the fd belongs to sd-bus
}

void BusService::start() { connect(); }

void BusService::connect() {
    sd_bus* raw = nullptr;
    int r = sd_bus_open_system(&raw);
    std::unique_ptr<sd_bus, BusDeleter> bus(raw);
    std::vector<std::unique_ptr<sd_bus_slot, SlotDeleter>> slots;
    const char* step = "connect to the system bus";
    // Each export makes a slot that keeps it; the first failure stops the rest.
    auto add = [&](auto&& export_with_slot) {
        sd_bus_slot* slot = nullptr;
        if (r >= 0 && (r = export_with_slot(&slot)) >= 0) slots.emplace_back(slot);
    };
    if (r >= 0) step = "export the objects";
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_object_vtable(bus.get(), slot, bus::manager_path, bus::manager_interface,
                                        bus::vtable<bus::ManagerBus>(), &manager_);
    });
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_fallback_vtable(bus.get(), slot, bus::rank_path_prefix, bus::rank_interface,
                                          bus::vtable<bus::RankBus>(), bus::RankBus::find, &ranks_);
    });
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_node_enumerator(bus.get(), slot, bus::rank_path_prefix, bus::RankBus::enumerate, &ranks_);
    });
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_fallback_vtable(bus.get(), slot, bus::node_path_prefix, bus::node_interface,
                                          bus::vtable<bus::NodeBus>(), bus::NodeBus::find, &nodes_);
    });
    add([&](sd_bus_slot** slot) {
        return sd_bus_add_node_enumerator(bus.get(), slot, bus::node_path_prefix, bus::NodeBus::enumerate, &nodes_);
    });
    if (r >= 0) {
        step = "own the name org.dpengine1 (is the bus policy file installed, and the daemon's user allowed?)";
        r = sd_bus_request_name(bus.get(), bus::service, 0);
    }
    if (r < 0) {
        if (!warned_) {
            log::warning("D-Bus: cannot {}: {}; serving without the bus, retrying in the background", step,
                         std::strerror(-r));
            warned_ = true;
        }
        schedule_reconnect();
        return;  // the slots go before the bus
    }
    slots_ = std::move(slots);
    bus_ = std::move(bus);
    fd_.assign(sd_bus_get_fd(bus_.get()));
    log::info("D-Bus: serving {} on the system bus", bus::service);
    warned_ = false;
    process();
}

void BusService::schedule_reconnect() {
    timer_.expires_after(std::chrono::seconds(2));
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (!ec) connect();
    });
}

void BusService::disconnected(int error) {
    log::warning("D-Bus: connection lost ({}); reconnecting in the background", std::strerror(-error));
    ++generation_;
    fd_.cancel();
    fd_.release();
    slots_.clear();
    bus_.reset();
    warned_ = true;
    schedule_reconnect();
}

void BusService::process() {
    for (int i = 0; i < 256; ++i) {
        int r = sd_bus_process(bus_.get(), nullptr);
        if (r < 0) return disconnected(r);
        if (r == 0) break;
    }
    arm();
}

// sd-bus says what it waits for (readable, writable, a deadline); asio waits for exactly that.
void BusService::arm() {
    uint64_t gen = ++generation_;
    fd_.cancel();
    timer_.cancel();
    int events = sd_bus_get_events(bus_.get());
    if (events < 0) return disconnected(events);
    auto on_ready = [this, gen](const boost::system::error_code& ec) {
        if (!ec && gen == generation_) process();
    };
    if (events & POLLIN) fd_.async_wait(asio::posix::stream_descriptor::wait_read, on_ready);
    if (events & POLLOUT) fd_.async_wait(asio::posix::stream_descriptor::wait_write, on_ready);
    uint64_t deadline_usec = 0;
    if (sd_bus_get_timeout(bus_.get(), &deadline_usec) >= 0 && deadline_usec != UINT64_MAX) {
        timespec now{};
        clock_gettime(CLOCK_MONOTONIC, &now);
        uint64_t now_usec = uint64_t(now.tv_sec) * 1000000 + uint64_t(now.tv_nsec) / 1000;
        timer_.expires_after(std::chrono::microseconds(deadline_usec > now_usec ? deadline_usec - now_usec : 0));
        timer_.async_wait(on_ready);
    }
}

void BusService::rank_changed(uint32_t rank) {
    if (!bus_) return;
    std::string path = std::string(bus::rank_path_prefix) + "/" + std::to_string(rank);
    static const auto signalled = [] {
        auto names = bus::emitted_properties<bus::RankBus>();
        names.push_back(nullptr);
        return names;
    }();
    sd_bus_emit_properties_changed_strv(bus_.get(), path.c_str(), bus::rank_interface,
                                        const_cast<char**>(signalled.data()));
    sd_bus_emit_properties_changed(bus_.get(), bus::manager_path, bus::manager_interface, "ReadyRanks", nullptr);
    // Emitting queues messages: let the loop write them.
    asio::post(io_, [this] {
        if (bus_) process();
    });
}

void BusService::nodes_changed() {
    if (!bus_) return;
    sd_bus_emit_properties_changed(bus_.get(), bus::manager_path, bus::manager_interface, "Epoch", nullptr);
    asio::post(io_, [this] {
        if (bus_) process();
    });
}

}  // namespace dpengine
