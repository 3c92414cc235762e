// The gloo DP group: TCP connections between the ranks, rendezvous through the head.
#pragma once

#include "engine/dp_group.hpp"

namespace dpengine::engine {

Result<std::unique_ptr<DpGroup>> make_gloo_group(const GroupSpec& spec, RendezvousChannel& channel);

// dpengine-gloo.so, the module dpengine-rank loads (module_loader.hpp) only in lockstep mode:
// gloo and the libraries it brings (hiredis, libibverbs, libnl) are not loaded at every rank
// start. Built from the same tree as the rank; the ABI number guards against another build's.
inline constexpr uint32_t gloo_module_abi = 1;

struct GlooModule {
    uint32_t abi = gloo_module_abi;
    Result<std::unique_ptr<DpGroup>> (*make_group)(const GroupSpec& spec, RendezvousChannel& channel) = nullptr;
};

}  // namespace dpengine::engine

// The module's one exported symbol.
extern "C" const dpengine::engine::GlooModule* dpengine_gloo_module();
