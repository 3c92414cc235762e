#include "engine.hpp"

#include "module_loader.hpp"
#include "http_backend.hpp"
#include "native_engine.hpp"

namespace dpengine::engine {
namespace {

// The cuda backend lives in a module loaded only now, so that the rank program itself needs
// no CUDA library.
Result<std::unique_ptr<Backend>> make_cuda_backend(const wire::EngineConfig& config, const RankIdentity& identity) {
    auto module = load_cuda_module();
    if (!module) return module.error();
    return (*module)->make_backend(config, identity.local_rank);
}

}  // namespace

Result<std::unique_ptr<Engine>> make_engine(const wire::EngineConfig& config, const RankIdentity& identity) {
    if (config.backend == "http") return make_http_engine(config, identity);
    auto backend = config.backend == "cuda" ? make_cuda_backend(config, identity) : make_backend(config);
    if (!backend) return backend.error();
    return std::unique_ptr<Engine>(std::make_unique<NativeEngine>(std::move(backend).value(), config));
}

}  // namespace dpengine::engine
