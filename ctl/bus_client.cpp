#include "bus_client.hpp"

#include "bus/api.hpp"
#include "core/reason.hpp"
#include "verbs.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace dpctl {

namespace api = dpengine::bus;

namespace {

constexpr const char* properties_interface = "org.freedesktop.DBus.Properties";

// A watched signal arrived: the waiting loop re-reads the ranks.
int note_change(sd_bus_message*, void* changed, sd_bus_error*) {
    *static_cast<bool*>(changed) = true;
    return 0;
}

std::string bus_address() {
    const char* address = std::getenv("DBUS_SYSTEM_BUS_ADDRESS");
    return address && *address ? address : "unix:path=/run/dbus/system_bus_socket";
}

bool is_connection_error(int r) {
    return r == -ENOENT || r == -ECONNREFUSED || r == -ECONNRESET || r == -ENOTCONN || r == -EPIPE || r == -ESHUTDOWN ||
        r == -EACCES || r == -EPERM || r == -ENXIO;
}

std::string not_running_message() {
    return std::string("dpengined is not running (") + api::service +
        " is not on the system bus); start it with 'systemctl start dpengined'";
}

// Reads one a{sv} property dictionary into `set(name, reader)` calls.
template <class Set>
int read_properties(sd_bus_message* m, Set&& set) {
    int r = sd_bus_message_enter_container(m, 'a', "{sv}");
    if (r < 0) return r;
    while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
        const char* name = nullptr;
        if ((r = sd_bus_message_read(m, "s", &name)) < 0) return r;
        char type = 0;
        const char* contents = nullptr;
        if ((r = sd_bus_message_peek_type(m, &type, &contents)) < 0) return r;
        if ((r = sd_bus_message_enter_container(m, 'v', contents)) < 0) return r;
        std::string_view sig = contents ? contents : "";
        if (sig == "s") {
            const char* s = nullptr;
            if ((r = sd_bus_message_read(m, "s", &s)) < 0) return r;
            set(std::string_view(name), std::string(s), uint64_t(0));
        } else if (sig == "u") {
            uint32_t u = 0;
            if ((r = sd_bus_message_read(m, "u", &u)) < 0) return r;
            set(std::string_view(name), std::string(), uint64_t(u));
        } else if (sig == "t") {
            uint64_t t = 0;
            if ((r = sd_bus_message_read(m, "t", &t)) < 0) return r;
            set(std::string_view(name), std::string(), t);
        } else if ((r = sd_bus_message_skip(m, contents)) < 0) {  // a property this dpctl does not know
            return r;
        }
        if ((r = sd_bus_message_exit_container(m)) < 0) return r;  // v
        if ((r = sd_bus_message_exit_container(m)) < 0) return r;  // e
    }
    if (r < 0) return r;
    return sd_bus_message_exit_container(m);
}

}  // namespace

BusClient BusClient::connect() {
    sd_bus* raw = nullptr;
    int r = sd_bus_open_system(&raw);
    BusPtr bus(raw);
    if (r < 0) {
        throw Failure(exit_status::not_running,
                      "cannot connect to the system bus at " + bus_address() + ": " + std::strerror(-r) +
                          "; dpengined is controlled over D-Bus: is the D-Bus system bus running?");
    }
    return BusClient(std::move(bus));
}

void BusClient::fail(const std::string& what, int r, const BusError& error, bool mutating) const {
    const std::string name = error.name(), message = error.message();
    if (name == SD_BUS_ERROR_SERVICE_UNKNOWN || name == SD_BUS_ERROR_NAME_HAS_NO_OWNER) {
        throw Failure(exit_status::not_running, not_running_message());
    }
    if (name == SD_BUS_ERROR_ACCESS_DENIED || name == SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED) {
        // The bus's own refusal (its policy) says nothing useful; the daemon's says why.
        if (mutating && (message.empty() || message.rfind("Rejected send message", 0) == 0)) {
            throw Failure(exit_status::access_denied,
                          std::string("access denied: changing dpengine needs root or "
                                      "membership of the group '") +
                              api::manage_group + "'");
        }
        throw Failure(exit_status::access_denied,
                      mutating ? "access denied: " + message : "access denied: " + what + ": " + message);
    }
    // The daemon's own answers: the reason table gives each its exit status.
    if (auto reason = dpengine::reason_from_bus_error(name)) {
        const int status = dpengine::entry(*reason).dpctl_exit;
        const std::string why = message.empty() ? name : message;
        throw Failure(status, status == exit_status::rejected ? why : what + ": " + why);
    }
    if (name == SD_BUS_ERROR_UNKNOWN_METHOD || name == SD_BUS_ERROR_UNKNOWN_OBJECT ||
        name == SD_BUS_ERROR_UNKNOWN_INTERFACE || name == SD_BUS_ERROR_UNKNOWN_PROPERTY) {
        throw Failure(exit_status::failure,
                      what + ": the running dpengined does not offer this (" + message +
                          "); is it older than this dpctl (" DPENGINE_VERSION ")?");
    }
    if (name == SD_BUS_ERROR_NO_REPLY || name == SD_BUS_ERROR_TIMEOUT || r == -ETIMEDOUT) {
        throw Failure(exit_status::failure, what + ": dpengined did not answer in time");
    }
    if (!error.is_set() && is_connection_error(r)) {
        throw Failure(
            exit_status::not_running,
            std::string("lost the connection to the system bus at ") + bus_address() + " (" + std::strerror(-r) + ")");
    }
    if (!message.empty()) throw Failure(exit_status::failure, what + ": " + message);
    throw Failure(exit_status::failure, what + ": " + (name.empty() ? std::strerror(-r) : name));
}

ManagerInfo BusClient::manager() {
    BusError error;
    sd_bus_message* raw = nullptr;
    int r = sd_bus_call_method(bus_.get(), api::service, api::manager_path, properties_interface, "GetAll", error.get(),
                               &raw, "s", api::manager_interface);
    MessagePtr reply(raw);
    if (r < 0) fail("reading the daemon's properties", r, error, false);
    ManagerInfo info;
    r = read_properties(reply.get(), [&info](std::string_view name, std::string s, uint64_t n) {
        if (name == "Role") info.role = std::move(s);
        else if (name == "NodeName") info.node = std::move(s);
        else if (name == "DPSize") info.dp_size = static_cast<uint32_t>(n);
        else if (name == "Epoch") info.epoch = n;
        else if (name == "ReadyRanks") info.ready_ranks = static_cast<uint32_t>(n);
        else if (name == "Version") info.version = std::move(s);
    });
    if (r < 0)
        throw Failure(exit_status::failure, std::string("cannot parse the daemon's properties: ") + std::strerror(-r));
    return info;
}

std::vector<RankRow> BusClient::ranks() {
    BusError error;
    sd_bus_message* raw = nullptr;
    int r = sd_bus_call_method(bus_.get(), api::service, api::manager_path, api::manager_interface, api::list_ranks,
                               error.get(), &raw, "");
    MessagePtr reply(raw);
    if (r < 0) fail("listing the ranks", r, error, false);
    std::vector<RankRow> rows;
    const std::string entry = std::string(api::list_ranks_signature).substr(1);  // "(usssuuuttss)"
    if ((r = sd_bus_message_enter_container(reply.get(), 'a', entry.c_str())) >= 0) {
        for (;;) {
            RankRow row;
            const char *state = nullptr, *node = nullptr, *device = nullptr, *last_error = nullptr, *reason = nullptr;
            r = sd_bus_message_read(reply.get(), entry.c_str(), &row.rank, &state, &node, &device, &row.pid,
                                    &row.in_flight, &row.queued, &row.served, &row.restarts, &last_error, &reason);
            if (r <= 0) break;
            row.state = state;
            row.node = node;
            row.device = device;
            row.last_error = last_error;
            row.reason = reason;
            rows.push_back(std::move(row));
        }
        if (r >= 0) r = sd_bus_message_exit_container(reply.get());
    }
    if (r < 0) {
        throw Failure(exit_status::failure,
                      std::string("cannot parse the answer to ListRanks (expected ") + api::list_ranks_signature +
                          "): " + std::strerror(-r));
    }
    return rows;
}

void BusClient::add_activity(std::vector<RankRow>& rows) {
    BusError error;
    sd_bus_message* raw = nullptr;
    int r = sd_bus_call_method(bus_.get(), api::service, api::manager_path, api::manager_interface,
                               api::list_rank_activity, error.get(), &raw, "");
    MessagePtr reply(raw);
    // A daemon from before the method, or a bus policy from before it that does not let
    // everyone call it: the ranks' activity is unknown ("-"), the rest still shows.
    if (r < 0 && (error.name() == SD_BUS_ERROR_UNKNOWN_METHOD || error.name() == SD_BUS_ERROR_ACCESS_DENIED)) return;
    if (r < 0) fail("reading the ranks' activity", r, error, false);
    const std::string entry = std::string(api::list_rank_activity_signature).substr(1);  // "(ustttdd)"
    if ((r = sd_bus_message_enter_container(reply.get(), 'a', entry.c_str())) >= 0) {
        for (;;) {
            uint32_t rank = 0;
            const char* kind = nullptr;
            uint64_t epoch = 0, wave = 0, memory = 0;
            double rate = 0, share = 0;
            r = sd_bus_message_read(reply.get(), entry.c_str(), &rank, &kind, &epoch, &wave, &memory, &rate, &share);
            if (r <= 0) break;
            for (auto& row : rows) {
                if (row.rank != rank || !*kind) continue;  // "": the daemon does not know
                row.activity_known = true;
                row.group_kind = kind;
                row.group_epoch = epoch;
                row.wave = wave;
                row.memory_used = memory;
                row.steps_per_second = rate;
                row.dummy_step_share = share;
            }
        }
        if (r >= 0) r = sd_bus_message_exit_container(reply.get());
    }
    if (r < 0) {
        throw Failure(exit_status::failure,
                      std::string("cannot parse the answer to ListRankActivity (expected ") +
                          api::list_rank_activity_signature + "): " + std::strerror(-r));
    }
}

std::vector<NodeRow> BusClient::nodes() {
    BusError error;
    sd_bus_message* raw = nullptr;
    int r = sd_bus_call_method(bus_.get(), api::service, api::manager_path, api::manager_interface, api::list_nodes,
                               error.get(), &raw, "");
    MessagePtr reply(raw);
    if (r < 0) fail("listing the nodes", r, error, false);
    std::vector<NodeRow> rows;
    const std::string entry = std::string(api::list_nodes_signature).substr(1);  // "(ssssuuutt)"
    if ((r = sd_bus_message_enter_container(reply.get(), 'a', entry.c_str())) >= 0) {
        for (;;) {
            NodeRow row;
            const char *name = nullptr, *role = nullptr, *state = nullptr, *address = nullptr;
            r = sd_bus_message_read(reply.get(), entry.c_str(), &name, &role, &state, &address, &row.start_rank,
                                    &row.count, &row.wanted, &row.since, &row.incarnation);
            if (r <= 0) break;
            row.name = name;
            row.role = role;
            row.state = state;
            row.address = address;
            rows.push_back(std::move(row));
        }
        if (r >= 0) r = sd_bus_message_exit_container(reply.get());
    }
    if (r < 0) {
        throw Failure(exit_status::failure,
                      std::string("cannot parse the answer to ListNodes (expected ") + api::list_nodes_signature +
                          "): " + std::strerror(-r));
    }
    return rows;
}

void BusClient::assign(const std::string& node, uint32_t start, uint32_t count, const std::string& what) {
    BusError error;
    sd_bus_message* raw = nullptr;
    int r = sd_bus_call_method(bus_.get(), api::service, api::manager_path, api::manager_interface, api::assign_ranks,
                               error.get(), &raw, "suu", node.c_str(), start, count);
    MessagePtr reply(raw);
    if (r < 0) fail(what, r, error, true);
}

void BusClient::manage(const char* method, uint32_t rank, const std::string& what) {
    BusError error;
    sd_bus_message* raw = nullptr;
    int r = sd_bus_call_method(bus_.get(), api::service, api::manager_path, api::manager_interface, method, error.get(),
                               &raw, "u", rank);
    MessagePtr reply(raw);
    if (r < 0) fail(what, r, error, true);
}

void BusClient::manage(const char* method, const std::string& what) {
    BusError error;
    sd_bus_message* raw = nullptr;
    int r = sd_bus_call_method(bus_.get(), api::service, api::manager_path, api::manager_interface, method, error.get(),
                               &raw, "");
    MessagePtr reply(raw);
    if (r < 0) fail(what, r, error, true);
}

void BusClient::watch_ranks(const std::vector<uint32_t>& ranks, const std::string& what) {
    // The matches are floating (no slot): the bus owns them and frees them with itself. A slot
    // of ours, released before the bus, would send RemoveMatch, and the reply it waits for
    // would hold the bus, which then outlives dpctl (a leak under LeakSanitizer).
    auto added = [&](int r) {
        if (r < 0) fail(what + ": subscribing to the daemon's change signals", r, BusError(), false);
    };
    const std::string owner_changed = std::string(
                                          "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                                          "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='") +
        api::service + "'";
    added(sd_bus_add_match(bus_.get(), nullptr, owner_changed.c_str(), note_change, changed_.get()));
    for (uint32_t rank : ranks) {
        const std::string path = std::string(api::rank_path_prefix) + "/" + std::to_string(rank);
        added(sd_bus_match_signal(bus_.get(), nullptr, api::service, path.c_str(), properties_interface,
                                  "PropertiesChanged", note_change, changed_.get()));
    }
}

bool BusClient::wait_for_change(std::chrono::steady_clock::time_point deadline, const std::string& what) {
    using namespace std::chrono;
    for (;;) {
        // Dispatch what is queued first: signals that came while a method call waited for its
        // reply are queued, not lost.
        int r = sd_bus_process(bus_.get(), nullptr);
        if (r < 0) fail(what, r, BusError(), false);
        if (*changed_) {
            *changed_ = false;
            return true;
        }
        if (r > 0) continue;
        const auto now = steady_clock::now();
        if (now >= deadline) return false;
        r = sd_bus_wait(bus_.get(), static_cast<uint64_t>(duration_cast<microseconds>(deadline - now).count()) + 1);
        if (r < 0 && r != -EINTR) fail(what, r, BusError(), false);
    }
}

}  // namespace dpctl
