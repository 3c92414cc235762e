#include "engine/module_loader.hpp"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

namespace dpengine::engine {
namespace {

struct ModuleSpec {
    const char* file;          // "dpengine-cuda.so"
    const char* env_var;       // names the module's path instead of the search
    const char* entry;         // the exported function that returns the module's table
    const char* what;          // "the cuda backend module"
    const char* needed_for;    // what asked for it; starts every message
    const char* load_hint;     // what to do when it is there but does not load
    const char* install_hint;  // what to do when it is not there
};

std::vector<std::string> candidate_paths(const ModuleSpec& spec) {
    std::vector<std::string> paths;
    if (const char* env = std::getenv(spec.env_var); env && *env) {
        paths.emplace_back(env);
        return paths;
    }
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) paths.push_back((self.parent_path() / spec.file).string());
    paths.push_back(std::string(DPENGINE_MODULEDIR) + "/" + spec.file);
    return paths;
}

// The module's table (what its entry function returns), checked against this build's ABI
// number; it stays loaded for the life of the process.
template <class Table>
Result<const Table*> load_module(const ModuleSpec& spec, uint32_t abi) {
    std::string tried;
    for (const std::string& path : candidate_paths(spec)) {
        if (::access(path.c_str(), F_OK) != 0) {
            tried += (tried.empty() ? "" : ", ") + path + " (not there)";
            continue;
        }
        // RTLD_LOCAL: the module's libraries stay out of the rank's symbol space.
        void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!handle) {
            return Error{std::string(spec.needed_for) + ": cannot load " + path + ": " + ::dlerror() + " (" +
                             spec.load_hint + ")",
                         "module-missing"};
        }
        using Entry = const Table* (*)();
        auto entry = reinterpret_cast<Entry>(::dlsym(handle, spec.entry));
        const Table* table = entry ? entry() : nullptr;
        if (!table || table->abi != abi) {
            ::dlclose(handle);
            return Error{std::string(spec.needed_for) + ": " + path + " is not " + spec.what +
                             " of this dpengine build; reinstall the dpengine package",
                         "module-missing"};
        }
        return table;
    }
    return Error{std::string(spec.needed_for) + ": " + spec.what + " is not installed (looked for " + tried + "); " +
                     spec.install_hint + ", or set " + spec.env_var + " to the module's path",
                 "module-missing"};
}

const CudaModule* cuda_loaded = nullptr;
const GlooModule* gloo_loaded = nullptr;

}  // namespace

Result<const CudaModule*> load_cuda_module() {
    if (cuda_loaded) return cuda_loaded;
    static const ModuleSpec spec{
        "dpengine-cuda.so",
        "DPENGINE_CUDA_MODULE",
        "dpengine_cuda_module",
        "the cuda backend module",
        "engine.backend = \"cuda\"",
        "the module needs the CUDA runtime and cuBLAS libraries: install the CUDA toolkit's runtime libraries or "
        "add their directory to the loader path",
        "install a dpengine package built with the CUDA toolkit"};
    auto module = load_module<CudaModule>(spec, cuda_module_abi);
    if (module) cuda_loaded = *module;
    return module;
}

const CudaModule* loaded_cuda_module() { return cuda_loaded; }

Result<const GlooModule*> load_gloo_module() {
    if (gloo_loaded) return gloo_loaded;
    static const ModuleSpec spec{"dpengine-gloo.so",
                                 "DPENGINE_GLOO_MODULE",
                                 "dpengine_gloo_module",
                                 "the gloo DP group module",
                                 "lockstep mode with a gloo DP group",
                                 "the module needs libgloo: install the libgloo0 package",
                                 "reinstall the dpengine package, which ships it beside dpengine-rank"};
    auto module = load_module<GlooModule>(spec, gloo_module_abi);
    if (module) gloo_loaded = *module;
    return module;
}

Result<std::unique_ptr<DpGroup>> make_group_of_kind(const GroupSpec& spec, RendezvousChannel& channel) {
    if (spec.kind == "nccl") {
        if (!cuda_loaded) {
            return Error{
                "the head asks for an NCCL DP group, which needs engine.backend = \"cuda\"; "
                "set data_parallel.group = \"gloo\"",
                "group-failed"};
        }
        return cuda_loaded->make_nccl_group(spec, channel);
    }
    auto gloo = load_gloo_module();
    if (!gloo) return Error{gloo.error().message, "group-failed"};
    return (*gloo)->make_group(spec, channel);
}

}  // namespace dpengine::engine
