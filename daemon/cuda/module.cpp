// The cuda backend module's entry point (engine/cuda_module.hpp).
#include "cuda/cuda_backend.hpp"
#include "cuda/nccl_group.hpp"
#include "engine/cuda_module.hpp"

extern "C" __attribute__((visibility("default"))) const dpengine::engine::CudaModule* dpengine_cuda_module() {
    static const dpengine::engine::CudaModule module{
        dpengine::engine::cuda_module_abi,
        &dpengine::cuda::make_cuda_backend,
        &dpengine::cuda::make_nccl_group,
    };
    return &module;
}
