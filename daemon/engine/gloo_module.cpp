// The gloo DP group module's entry point (engine/gloo_group.hpp).
#include "engine/gloo_group.hpp"

extern "C" __attribute__((visibility("default"))) const dpengine::engine::GlooModule* dpengine_gloo_module() {
    static const dpengine::engine::GlooModule module{dpengine::engine::gloo_module_abi,
                                                     &dpengine::engine::make_gloo_group};
    return &module;
}
