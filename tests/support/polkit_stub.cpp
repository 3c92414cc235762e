// A stand-in for polkitd on a private test bus: owns org.freedesktop.PolicyKit1 and answers
// CheckAuthorization from a fixed list of allowed actions, printing every question it gets
// ("check ACTION SUBJECT-KIND SUBJECT-NAME FLAGS") so a test can see what the daemon asked.
//
// Usage: dpengine-test-polkit [ALLOWED-ACTION...]   (bus: $DBUS_SYSTEM_BUS_ADDRESS)
// Prints "ready" once it owns the name; exits on SIGTERM.
#include <systemd/sd-bus.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <set>
#include <string>

namespace {

std::set<std::string> allowed;

int check_authorization(sd_bus_message* m, void*, sd_bus_error*) {
    const char *kind = nullptr, *action = nullptr, *key = nullptr, *name = "";
    int r = sd_bus_message_enter_container(m, 'r', "sa{sv}");
    if (r >= 0) r = sd_bus_message_read(m, "s", &kind);
    if (r >= 0) r = sd_bus_message_enter_container(m, 'a', "{sv}");
    while (r >= 0 && (r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
        if ((r = sd_bus_message_read(m, "s", &key)) < 0) break;
        if (std::strcmp(key, "name") == 0) r = sd_bus_message_read(m, "v", "s", &name);
        else r = sd_bus_message_skip(m, "v");
        if (r >= 0) r = sd_bus_message_exit_container(m);
    }
    if (r >= 0) r = sd_bus_message_exit_container(m);
    if (r >= 0) r = sd_bus_message_exit_container(m);
    if (r >= 0) r = sd_bus_message_read(m, "s", &action);
    if (r >= 0) r = sd_bus_message_skip(m, "a{ss}");
    uint32_t flags = 0;
    if (r >= 0) r = sd_bus_message_read(m, "u", &flags);
    if (r < 0) return r;
    std::printf("check %s %s %s %u\n", action, kind, name, flags);
    std::fflush(stdout);
    bool yes = allowed.count(action) > 0;
    return sd_bus_reply_method_return(m, "(bba{ss})", yes, 0, 0);
}

const sd_bus_vtable authority_vtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("CheckAuthorization", "(sa{sv})sa{ss}us", "(bba{ss})", check_authorization,
                  SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_VTABLE_END,
};

}  // namespace

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) allowed.insert(argv[i]);
    sd_bus* raw = nullptr;
    int r = sd_bus_open_system(&raw);
    std::unique_ptr<sd_bus, decltype(&sd_bus_flush_close_unref)> bus(raw, &sd_bus_flush_close_unref);
    if (r >= 0) r = sd_bus_add_object_vtable(bus.get(), nullptr, "/org/freedesktop/PolicyKit1/Authority",
                                             "org.freedesktop.PolicyKit1.Authority", authority_vtable, nullptr);
    if (r >= 0) r = sd_bus_request_name(bus.get(), "org.freedesktop.PolicyKit1", 0);
    if (r < 0) {
        std::fprintf(stderr, "dpengine-test-polkit: %s\n", std::strerror(-r));
        return 1;
    }
    std::printf("ready\n");
    std::fflush(stdout);
    for (;;) {
        r = sd_bus_process(bus.get(), nullptr);
        if (r < 0) return 1;
        if (r == 0 && sd_bus_wait(bus.get(), UINT64_MAX) < 0) return 1;
    }
}
