// The gloo DP group: TCP connections between the ranks, rendezvous through the head.
#pragma once

#include "engine/dp_group.hpp"

namespace dpengine::engine {

Result<std::unique_ptr<DpGroup>> make_gloo_group(const GroupSpec& spec, RendezvousChannel& channel);

}  // namespace dpengine::engine
