// The interface between dpengine-rank and the cuda backend module (dpengine-cuda.so), which
// the rank loads with dlopen only when engine.backend = "cuda": the rank program has no CUDA
// link dependency, and one package serves nodes with and without GPUs. Both sides are built
// from the same tree by the same compiler, so C++ types cross the boundary; the ABI number
// guards against a module from another build.
#pragma once

#include "core/error.hpp"
#include "core/wire.hpp"
#include "engine/backend.hpp"
#include "engine/dp_group.hpp"

#include <memory>

namespace dpengine::engine {

inline constexpr uint32_t cuda_module_abi = 1;

struct CudaModule {
    uint32_t abi = cuda_module_abi;
    // Binds this rank's GPU (local rank → device), allocates weights and cache, and returns
    // the backend. Errors have code "no-gpu" (no driver, no device) or "config".
    Result<std::unique_ptr<Backend>> (*make_backend)(const wire::EngineConfig& config, uint32_t local_rank) = nullptr;
    // The NCCL DP group on the GPU make_backend bound; in it, the backend's steps all-reduce
    // their activations (the expert-parallel combine).
    Result<std::unique_ptr<DpGroup>> (*make_nccl_group)(const GroupSpec& spec, RendezvousChannel& channel) = nullptr;
};

}  // namespace dpengine::engine

// The module's one exported symbol.
extern "C" const dpengine::engine::CudaModule* dpengine_cuda_module();
