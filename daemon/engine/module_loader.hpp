// Finds and loads dpengine-rank's modules, the shared objects it loads with dlopen only when
// a configuration needs them, so that neither their libraries nor their start-up cost come
// with every rank: the cuda backend (cuda_module.hpp) and the gloo DP group (gloo_group.hpp).
#pragma once

#include "engine/cuda_module.hpp"
#include "engine/gloo_group.hpp"

namespace dpengine::engine {

// Loads dpengine-cuda.so once per process: $DPENGINE_CUDA_MODULE, else beside the running
// program (a build tree), else the installed module directory. The error names the paths
// tried and the package that ships the module.
Result<const CudaModule*> load_cuda_module();

// The loaded module, or nothing when no rank asked for the cuda backend.
const CudaModule* loaded_cuda_module();

// Loads dpengine-gloo.so the same way ($DPENGINE_GLOO_MODULE first).
Result<const GlooModule*> load_gloo_module();

// The DP group factory of dpengine-rank: gloo from its module, or NCCL from the cuda module.
Result<std::unique_ptr<DpGroup>> make_group_of_kind(const GroupSpec& spec, RendezvousChannel& channel);

}  // namespace dpengine::engine
