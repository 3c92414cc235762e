#include "engine.hpp"

#include "http_backend.hpp"
#include "step_loop.hpp"

namespace dpengine::engine {

Result<std::unique_ptr<Engine>> make_engine(const wire::EngineConfig& config, const RankIdentity& identity) {
    if (config.backend == "http") return make_http_engine(config, identity);
    auto backend = make_backend(config);
    if (!backend) return backend.error();
    return std::unique_ptr<Engine>(
        std::make_unique<StepLoop>(std::move(backend).value(), config.max_batch, config.max_model_len));
}

}  // namespace dpengine::engine
