// Who may change dpengine over the bus, and the flow of a changing call: classify the caller,
// ask polkit where it runs, make the change, answer. The answer to a refused change is the D-Bus
// error core/reason.hpp's table names for its reason code.
#pragma once

#include "core/error.hpp"

#include <systemd/sd-bus.h>

#include <functional>

namespace dpengine::bus {

// Runs `change` for the caller of `m` if it may make it, and answers the call; for a member of
// the dpengine group while polkit runs, asks polkit about `action` first and answers later.
int authorize_then(sd_bus_message* m, const char* action, std::function<Status()> change, sd_bus_error* error);

}  // namespace dpengine::bus
