#include "engine/cuda_module_loader.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

namespace dpengine::engine {
namespace {

constexpr const char* module_file = "dpengine-cuda.so";
const CudaModule* loaded = nullptr;

std::vector<std::string> candidate_paths() {
    std::vector<std::string> paths;
    if (const char* env = std::getenv("DPENGINE_CUDA_MODULE"); env && *env) {
        paths.emplace_back(env);
        return paths;
    }
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) paths.push_back((self.parent_path() / module_file).string());
    paths.push_back(std::string(DPENGINE_MODULEDIR) + "/" + module_file);
    return paths;
}

}  // namespace

Result<const CudaModule*> load_cuda_module() {
    if (loaded) return loaded;
    std::string tried;
    for (const std::string& path : candidate_paths()) {
        if (::access(path.c_str(), F_OK) != 0) {
            tried += (tried.empty() ? "" : ", ") + path + " (not there)";
            continue;
        }
        // RTLD_LOCAL: the module's CUDA libraries stay out of the rank's symbol space.
        void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!handle) {
            return Error{"engine.backend = \"cuda\": cannot load " + path + ": " + ::dlerror() +
                             " (the module needs the CUDA runtime and cuBLAS libraries: install the CUDA toolkit's "
                             "runtime libraries or add their directory to the loader path)",
                         "module-missing"};
        }
        using Entry = const CudaModule* (*)();
        auto entry = reinterpret_cast<Entry>(::dlsym(handle, "dpengine_cuda_module"));
        const CudaModule* module = entry ? entry() : nullptr;
        if (!module || module->abi != cuda_module_abi) {
            ::dlclose(handle);
            return Error{"engine.backend = \"cuda\": " + path +
                             " is not a cuda backend module of this dpengine build; reinstall the dpengine package",
                         "module-missing"};
        }
        loaded = module;  // stays loaded for the life of the process
        return loaded;
    }
    return Error{"engine.backend = \"cuda\": the cuda backend module is not installed (looked for " + tried +
                     "); install a dpengine package built with the CUDA toolkit, or set DPENGINE_CUDA_MODULE "
                     "to the module's path",
                 "module-missing"};
}

const CudaModule* loaded_cuda_module() { return loaded; }

Result<std::unique_ptr<DpGroup>> make_group_of_kind(const GroupSpec& spec, RendezvousChannel& channel,
                                                    const GroupFactory& gloo) {
    if (spec.kind == "nccl") {
        if (!loaded) {
            return Error{"the head asks for an NCCL DP group, which needs engine.backend = \"cuda\"; "
                             "set data_parallel.group = \"gloo\"",
                         "group-failed"};
        }
        return loaded->make_nccl_group(spec, channel);
    }
    if (!gloo) return Error{"this dpengine-rank was built without the gloo DP group", "group-failed"};
    return gloo(spec, channel);
}

}  // namespace dpengine::engine
