// Finds and loads the cuda backend module (cuda_module.hpp) for the rank program.
#pragma once

#include "engine/cuda_module.hpp"

namespace dpengine::engine {

// Loads dpengine-cuda.so once per process: $DPENGINE_CUDA_MODULE, else beside the running
// program (a build tree), else the installed module directory. The error names the paths
// tried and the package that ships the module.
Result<const CudaModule*> load_cuda_module();

// The loaded module, or nothing when no rank asked for the cuda backend.
const CudaModule* loaded_cuda_module();

// The DP group factory of dpengine-rank: gloo, or NCCL from the cuda module.
Result<std::unique_ptr<DpGroup>> make_group_of_kind(const GroupSpec& spec, RendezvousChannel& channel,
                                                    const GroupFactory& gloo);

}  // namespace dpengine::engine
