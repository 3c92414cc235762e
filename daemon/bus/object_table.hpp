// What each org.dpengine1 object type is made of, as tables: its properties (name, D-Bus
// signature, whether it changes and signals, and how to read it from the object's snapshot) and
// its methods (an sd-bus vtable written with SD_BUS_METHOD_WITH_ARGS, argument names included).
// The vtable the bus serves is built from them, and so is the XML --bus-introspect prints: one
// source for both (like resolved's *-bus.c files, whose vtables are their only description).
#pragma once

#include "bus/node_control.hpp"

#include <systemd/sd-bus.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace dpengine::bus {

template <class Snapshot>
struct Property {
    const char* name;
    const char* signature;
    // SD_BUS_VTABLE_PROPERTY_CONST, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE, or 0: it changes too
    // often to signal (counters), read it.
    uint64_t flags;
    int (*append)(sd_bus_message* reply, const Snapshot& snapshot);
};

// A property that is a member of the snapshot, its signature from the member's type:
//   member<&NodeInfo::count>("Count", 0)
template <class T>
struct member_pointer;
template <class Object, class T>
struct member_pointer<T Object::*> {
    using object = Object;
    using value = T;
};

template <class T>
constexpr const char* signature_of() {
    if constexpr (std::is_same_v<T, std::string>) return "s";
    else if constexpr (std::is_same_v<T, uint32_t>) return "u";
    else if constexpr (std::is_same_v<T, uint64_t>) return "t";
    else if constexpr (std::is_same_v<T, double>) return "d";
    else static_assert(sizeof(T) == 0, "no D-Bus type for this member");
}

template <auto Member>
int append_member(sd_bus_message* reply, const typename member_pointer<decltype(Member)>::object& snapshot) {
    using T = typename member_pointer<decltype(Member)>::value;
    const T& value = snapshot.*Member;
    if constexpr (std::is_same_v<T, std::string>) return sd_bus_message_append_basic(reply, 's', value.c_str());
    else return sd_bus_message_append_basic(reply, signature_of<T>()[0], &value);
}

template <auto Member>
constexpr Property<typename member_pointer<decltype(Member)>::object> member(const char* name, uint64_t flags) {
    return {name, signature_of<typename member_pointer<decltype(Member)>::value>(), flags, append_member<Member>};
}

// The flags of the tables' properties.
inline constexpr uint64_t constant = SD_BUS_VTABLE_PROPERTY_CONST;
inline constexpr uint64_t signals_changes = SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE;
inline constexpr uint64_t read_when_needed = 0;

// An object type's adapter provides:
//   using Snapshot = ...;                                    what one object's properties read
//   static std::span<const Property<Snapshot>> properties();
//   static std::span<const sd_bus_vtable> methods();         may be empty
//   static const Snapshot& snapshot_of(void* userdata);      the userdata sd-bus passes its getters
template <class Adapter>
int get_property(sd_bus*, const char*, const char*, const char* property, sd_bus_message* reply, void* userdata,
                 sd_bus_error* error) {
    for (const auto& p : Adapter::properties()) {
        if (std::strcmp(p.name, property) == 0) return p.append(reply, Adapter::snapshot_of(userdata));
    }
    return sd_bus_error_setf(error, SD_BUS_ERROR_UNKNOWN_PROPERTY, "no property %s", property);
}

// The adapter's vtable: its properties (each read by get_property), then its methods. Built
// once and kept for the life of the program, as sd-bus needs.
template <class Adapter>
const sd_bus_vtable* vtable() {
    static const std::vector<sd_bus_vtable> table = [] {
        std::vector<sd_bus_vtable> out;
        out.push_back(SD_BUS_VTABLE_START(0));
        for (const auto& p : Adapter::properties()) {
            out.push_back(SD_BUS_PROPERTY(p.name, p.signature, get_property<Adapter>, 0, p.flags));
        }
        for (const auto& m : Adapter::methods()) out.push_back(m);
        out.push_back(SD_BUS_VTABLE_END);
        return out;
    }();
    return table.data();
}

// The names of the properties that signal their changes (PropertiesChanged), in table order.
template <class Adapter>
std::vector<const char*> emitted_properties() {
    std::vector<const char*> names;
    for (const auto& p : Adapter::properties()) {
        if (p.flags & SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE) names.push_back(p.name);
    }
    return names;
}

// The base of an object type with one object per item of a list (ranks, nodes): sd-bus looks
// an object up by its path (find), and the property getters read what the lookup found.
template <class Item>
class ListedObjects {
public:
    explicit ListedObjects(NodeControl& node) : node_(node) {}
    ListedObjects(const ListedObjects&) = delete;
    ListedObjects& operator=(const ListedObjects&) = delete;

    static std::span<const sd_bus_vtable> methods() { return {}; }
    // userdata: what find() found.
    static const Item& snapshot_of(void* userdata) { return *static_cast<const Item*>(userdata); }

protected:
    // The end of a find callback: 0 for no object, else keeps `item` for the getters.
    int found(std::optional<Item> item, void** out) {
        if (!item) return 0;
        found_ = std::move(*item);
        *out = &found_;
        return 1;
    }

    NodeControl& node_;

private:
    // What find() found last, which sd-bus hands the property getters next. One at a time:
    // sd-bus dispatches one call at a time on the daemon's loop.
    Item found_;
};

// One <interface> element of introspection XML, from a vtable as vtable() builds it.
std::string interface_xml(const char* interface, const sd_bus_vtable* vtable);

// The complete types of a D-Bus signature, in order: "sa(us)u" -> "s", "a(us)", "u".
std::vector<std::string> complete_types(std::string_view signature);

// The object paths an enumerator returns, as the NULL-terminated array sd-bus takes over.
int path_list(const std::vector<std::string>& paths, char*** out);

}  // namespace dpengine::bus
