// The cuda backend (engine.backend = "cuda"); see cuda_backend.cpp.
#pragma once

#include "core/wire.hpp"
#include "engine/backend.hpp"

namespace dpengine::cuda {

Result<std::unique_ptr<engine::Backend>> make_cuda_backend(const wire::EngineConfig& config, uint32_t local_rank);

}  // namespace dpengine::cuda
