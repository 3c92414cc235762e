#include "bus/polkit.hpp"

#include "bus/api.hpp"
#include "core/log.hpp"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace dpengine::bus {

namespace {

// Who may change anything: root and the daemon's own user always; members of the dpengine
// group when polkit is not running, or when polkit grants the method's action (so an
// administrator can narrow what the group may do with polkit rules). Everyone else is refused.
// The bus policy says the same; this holds even on a bus without our policy file.
enum class Caller { privileged, member, other };

Result<Caller> classify_caller(sd_bus_message* m) {
    sd_bus_creds* creds = nullptr;
    int r = sd_bus_query_sender_creds(m, SD_BUS_CREDS_EUID, &creds);
    if (r < 0) return Error{"cannot tell who is calling: " + std::string(std::strerror(-r)), "denied"};
    std::unique_ptr<sd_bus_creds, decltype(&sd_bus_creds_unref)> owned(creds, &sd_bus_creds_unref);
    uid_t euid = 0;
    if (sd_bus_creds_get_euid(creds, &euid) < 0) return Error{"cannot tell who is calling", "denied"};
    if (euid == 0 || euid == ::geteuid()) return Caller::privileged;
    // The caller's groups from the user database, not from /proc (which the unit hides with
    // ProtectProc=invisible).
    const group* g = ::getgrnam(manage_group);
    const passwd* pw = ::getpwuid(euid);
    if (g && pw) {
        std::vector<gid_t> groups(64);
        int n = static_cast<int>(groups.size());
        if (::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n) < 0) {
            groups.resize(n);
            ::getgrouplist(pw->pw_name, pw->pw_gid, groups.data(), &n);
        }
        groups.resize(std::max(n, 0));
        if (std::find(groups.begin(), groups.end(), g->gr_gid) != groups.end()) return Caller::member;
    }
    return Caller::other;
}

int reply_status(sd_bus_message* m, sd_bus_error* error, const Status& status) {
    if (status) return sd_bus_reply_method_return(m, "");
    const auto& e = status.error();
    // The table names each control answer's D-Bus error; a code that is none is a failure.
    std::string_view name = entry(e.reason()).bus_error;
    if (name.empty()) name = entry(Reason::failed).bus_error;
    return sd_bus_error_set(error, std::string(name).c_str(), e.message.c_str());
}

bool polkit_running(sd_bus* bus) {
    sd_bus_message* reply = nullptr;
    int r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                               "NameHasOwner", nullptr, &reply, "s", polkit_service);
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> owned(reply, &sd_bus_message_unref);
    int has_owner = 0;
    return r >= 0 && sd_bus_message_read(reply, "b", &has_owner) >= 0 && has_owner;
}

// A changing method waiting for polkit's answer: the call to answer and the change to make.
struct PendingAuthorization {
    std::unique_ptr<sd_bus_message, decltype(&sd_bus_message_unref)> call;
    std::string action;
    std::function<Status()> change;
};

// Why polkit would not answer us about another user's call, and the fix: polkitd answers a
// caller other than root only for actions that name it as their owner.
std::string not_an_owner_hint() {
    const passwd* pw = ::getpwuid(::geteuid());
    const std::string user = pw ? pw->pw_name : std::to_string(::geteuid());
    return "; dpengined runs as user '" + user + "', which polkit answers only if org.dpengine1.policy (in " +
        "/usr/share/polkit-1/actions) names it in the annotation org.freedesktop.policykit.owner (unix-user:" + user +
        ")";
}

int polkit_answered(sd_bus_message* answer, void* userdata, sd_bus_error*) {
    auto& pending = *static_cast<PendingAuthorization*>(userdata);
    sd_bus_message* call = pending.call.get();
    sd_bus_error error = SD_BUS_ERROR_NULL;
    std::unique_ptr<sd_bus_error, decltype(&sd_bus_error_free)> owned(&error, &sd_bus_error_free);
    int authorized = 0, challenge = 0;
    if (const sd_bus_error* e = sd_bus_message_get_error(answer)) {
        std::string why = e->message ? e->message : e->name;
        if (sd_bus_error_has_name(e, polkit_error_not_authorized)) why += not_an_owner_hint();
        log::warning("D-Bus: polkit did not answer for {}: {}", pending.action, why);
        sd_bus_error_setf(&error, SD_BUS_ERROR_ACCESS_DENIED, "polkit could not authorize '%s': %s",
                          pending.action.c_str(), why.c_str());
    } else if (sd_bus_message_enter_container(answer, 'r', "bba{ss}") < 0 ||
               sd_bus_message_read(answer, "bb", &authorized, &challenge) < 0) {
        sd_bus_error_setf(&error, SD_BUS_ERROR_ACCESS_DENIED, "polkit's answer for '%s' was unreadable",
                          pending.action.c_str());
    } else if (!authorized) {
        sd_bus_error_setf(&error,
                          challenge ? SD_BUS_ERROR_INTERACTIVE_AUTHORIZATION_REQUIRED : SD_BUS_ERROR_ACCESS_DENIED,
                          "polkit denied the action '%s'%s", pending.action.c_str(),
                          challenge ? " without authentication (retry interactively, e.g. with pkexec)" : "");
    } else {
        reply_status(call, &error, pending.change());
    }
    if (sd_bus_error_is_set(&error)) return sd_bus_reply_method_error(call, &error);
    return sd_bus_reply_method_return(call, "");
}

}  // namespace

int authorize_then(sd_bus_message* m, const char* action, std::function<Status()> change, sd_bus_error* error) {
    auto caller = classify_caller(m);
    if (!caller) return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, caller.error().message.c_str());
    sd_bus* bus = sd_bus_message_get_bus(m);
    if (*caller == Caller::privileged || (*caller == Caller::member && !polkit_running(bus))) {
        return reply_status(m, error, change());
    }
    if (*caller == Caller::other) {
        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED,
                                 "changing dpengine needs root or membership of the group '%s'", manage_group);
    }
    auto* pending = new PendingAuthorization{{sd_bus_message_ref(m), &sd_bus_message_unref}, action, std::move(change)};
    uint64_t flags = sd_bus_message_get_allow_interactive_authorization(m) > 0 ? 1 : 0;  // AllowUserInteraction
    sd_bus_slot* slot = nullptr;
    int r = sd_bus_call_method_async(bus, &slot, polkit_service, "/org/freedesktop/PolicyKit1/Authority",
                                     "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization", polkit_answered,
                                     pending, "(sa{sv})sa{ss}us", "system-bus-name", 1, "name", "s",
                                     sd_bus_message_get_sender(m), action, 0, flags, "");
    if (r < 0) {
        delete pending;
        return sd_bus_error_setf(error, SD_BUS_ERROR_ACCESS_DENIED, "cannot ask polkit about '%s': %s", action,
                                 std::strerror(-r));
    }
    // The slot lives as long as the bus connection; it frees the pending call with it, answered
    // or not (a dropped connection drops the call too).
    sd_bus_slot_set_destroy_callback(slot, [](void* p) { delete static_cast<PendingAuthorization*>(p); });
    sd_bus_slot_set_floating(slot, 1);
    sd_bus_slot_unref(slot);
    return 1;
}

}  // namespace dpengine::bus
