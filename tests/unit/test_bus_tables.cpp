// The org.dpengine1 objects' tables (daemon/bus/*_bus.cpp): each property's getter writes the
// signature its table states, and the introspection XML written from the served vtables lists
// exactly what org.dpengine1(5) documents: every method with its argument types and names, every
// property with its type, "constant" where the table says so.
#include "bus/bus_service.hpp"
#include "bus/manager_bus.hpp"
#include "bus/node_bus.hpp"
#include "bus/object_table.hpp"
#include "bus/rank_bus.hpp"

#include <catch2/catch.hpp>

#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

using namespace dpengine;

namespace {

using BusPtr = std::unique_ptr<sd_bus, decltype(&sd_bus_flush_close_unref)>;
using MessagePtr = std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)>;

// A started bus over one end of a socket pair: enough to build messages on, no daemon needed.
struct StartedBus {
    StartedBus() : bus(nullptr, &sd_bus_flush_close_unref) {
        int fds[2];
        REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) == 0);
        peer = fds[1];
        sd_bus* raw = nullptr;
        REQUIRE(sd_bus_new(&raw) >= 0);
        bus.reset(raw);
        REQUIRE(sd_bus_set_fd(raw, fds[0], fds[0]) >= 0);
        REQUIRE(sd_bus_start(raw) >= 0);
    }
    ~StartedBus() { ::close(peer); }
    StartedBus(const StartedBus&) = delete;
    StartedBus& operator=(const StartedBus&) = delete;

    int peer = -1;  // the other end, open while the bus is
    BusPtr bus;
};

// What `property` appends for `snapshot`, as the message's body signature.
template <class Snapshot>
std::string appended_signature(sd_bus* bus, const bus::Property<Snapshot>& property, const Snapshot& snapshot) {
    sd_bus_message* raw = nullptr;
    REQUIRE(sd_bus_message_new_method_call(bus, &raw, nullptr, "/x", "x.y", "Z") >= 0);
    MessagePtr m(raw, &sd_bus_message_unref);
    REQUIRE(property.append(m.get(), snapshot) >= 0);
    const char* signature = sd_bus_message_get_signature(m.get(), 1);
    return signature ? signature : "";
}

template <class Adapter>
void check_getters(const typename Adapter::Snapshot& snapshot) {
    StartedBus started;
    for (const auto& p : Adapter::properties()) {
        INFO("property " << p.name);
        CHECK(appended_signature(started.bus.get(), p, snapshot) == p.signature);
    }
}

// An interface's members as written in the XML or the page: "Method(in)" -> "out" with the
// argument names ("u rank" / "a(us) ranks"), "Property" -> "type[ constant]".
using Members = std::map<std::string, std::string>;

std::map<std::string, Members> introspected() {
    std::map<std::string, Members> out;
    std::istringstream xml(BusService::introspection_xml());
    const std::regex interface(R"re(^ <interface name="([^"]+)">$)re");
    const std::regex method(R"re(^  <method name="(\w+)"(?:/>|>(.*)</method>)$)re");
    const std::regex arg(R"re(<arg type="([^"]+)" name="(\w+)" direction="(in|out)"/>)re");
    const std::regex property(R"re(^  <property name="(\w+)" type="([^"]+)" access="read"/>$)re");
    Members* members = nullptr;
    std::string line;
    while (std::getline(xml, line)) {
        std::smatch m;
        if (std::regex_match(line, m, interface)) {
            members = &out[m[1]];
        } else if (members && std::regex_match(line, m, method)) {
            std::string ins, outs;
            const std::string args = m[2];
            for (std::sregex_iterator a(args.begin(), args.end(), arg), end; a != end; ++a) {
                std::string& to = (*a)[3] == "in" ? ins : outs;
                to += (to.empty() ? "" : ", ") + std::string((*a)[1]) + " " + std::string((*a)[2]);
            }
            (*members)[std::string(m[1]) + "(" + ins + ")"] = outs;
        } else if (members && std::regex_match(line, m, property)) {
            (*members)[m[1]] = m[2];
        } else {
            INFO(line);
            CHECK((line.find("node") != std::string::npos || line == " </interface>"));
        }
    }
    return out;
}

// The page's members by interface: each top-level section that "implements interface *X*".
// Methods: "*Name*(u rank, s node) -> a(us)"; properties: "*Name* (t, read-only, constant)". The
// page names no result arguments, so those compare by type only.
std::map<std::string, Members> documented(std::map<std::string, std::set<std::string>>& constants) {
    std::ifstream page(DPENGINE_SOURCE_DIR "/man/org.dpengine1.5.scd");
    REQUIRE(page.good());
    // The top-level sections' lines.
    std::vector<std::vector<std::string>> sections;
    std::string line;
    while (std::getline(page, line)) {
        if (line.rfind("# ", 0) == 0) sections.emplace_back();
        else if (!sections.empty()) sections.back().push_back(line);
    }
    const std::regex implements(R"(implements\s+interface\s+\*(org\.dpengine1\.\w+)\*)");
    const std::regex method(R"(^\*(\w+)\*\(([^)]*)\)(?: -> (\S+))?$)");
    const std::regex property(R"(^\*(\w+)\* \((\w[^,)]*)([^)]*)\)$)");
    std::map<std::string, Members> out;
    for (const auto& lines : sections) {
        std::string text;
        for (const auto& l : lines) text += l + " ";
        std::smatch named;
        if (!std::regex_search(text, named, implements)) continue;
        const std::string interface = named[1];
        Members& members = out[interface];
        for (const auto& l : lines) {
            std::smatch m;
            if (std::regex_match(l, m, method)) {
                members[std::string(m[1]) + "(" + std::string(m[2]) + ")"] = m[3];
            } else if (std::regex_match(l, m, property)) {
                members[m[1]] = m[2];
                if (std::string(m[3]).find("constant") != std::string::npos) constants[interface].insert(m[1]);
            }
        }
    }
    return out;
}

// The XML's members with the result arguments' names left out, as the page writes them.
Members without_result_names(const Members& members) {
    Members out;
    for (const auto& [name, result] : members) out[name] = result.substr(0, result.find(' '));
    return out;
}

template <class Adapter>
std::set<std::string> constant_properties() {
    std::set<std::string> out;
    for (const auto& p : Adapter::properties()) {
        if (p.flags & SD_BUS_VTABLE_PROPERTY_CONST) out.insert(p.name);
    }
    return out;
}

}  // namespace

TEST_CASE("each property's getter writes the signature its table states", "[bus]") {
    RankInfo rank;
    rank.rank = 3;
    rank.state = RankState::ready;
    rank.activity_known = true;
    check_getters<bus::RankBus>(rank);
    NodeInfo node;
    node.name = "node-b";
    check_getters<bus::NodeBus>(node);
    check_getters<bus::ManagerBus>(bus::ManagerSnapshot{"head", "a", 4, 7, 2, "0.1.0"});
}

TEST_CASE("only properties that signal their changes are emitted", "[bus]") {
    std::vector<std::string> emitted;
    for (const char* name : bus::emitted_properties<bus::RankBus>()) emitted.emplace_back(name);
    CHECK(emitted == std::vector<std::string>{"State", "Node", "Device", "Pid", "Restarts", "LastError", "Reason"});
}

TEST_CASE("D-Bus signatures split into complete types", "[bus]") {
    CHECK(bus::complete_types("") == std::vector<std::string>{});
    CHECK(bus::complete_types("suu") == std::vector<std::string>{"s", "u", "u"});
    CHECK(bus::complete_types("a(usssuuuttss)") == std::vector<std::string>{"a(usssuuuttss)"});
    CHECK(bus::complete_types("sa{sv}aau(i(bs))") == std::vector<std::string>{"s", "a{sv}", "aau", "(i(bs))"});
}

TEST_CASE("the generated introspection lists what org.dpengine1(5) documents", "[bus][manpages]") {
    std::map<std::string, std::set<std::string>> documented_constants;
    const auto page = documented(documented_constants);
    const auto xml = introspected();
    REQUIRE(xml.size() == 3);
    for (const auto& [interface, members] : xml) {
        INFO("interface " << interface);
        REQUIRE(page.count(interface) == 1);
        CHECK(without_result_names(members) == page.at(interface));
    }
    CHECK(documented_constants["org.dpengine1.Manager"] == constant_properties<bus::ManagerBus>());
    CHECK(documented_constants["org.dpengine1.Rank"] == constant_properties<bus::RankBus>());
    CHECK(documented_constants["org.dpengine1.Node"] == constant_properties<bus::NodeBus>());
}

TEST_CASE("rank object paths name ranks", "[bus]") {
    CHECK(bus::rank_of_path("/org/dpengine1/rank/12") == 12u);
    CHECK(bus::rank_of_path("/org/dpengine1/rank/") == std::nullopt);
    CHECK(bus::rank_of_path("/org/dpengine1/rank/1x") == std::nullopt);
    CHECK(bus::rank_of_path("/org/dpengine1/rank/99999999999") == std::nullopt);
    CHECK(bus::rank_of_path("/org/dpengine1/node/a") == std::nullopt);
}
