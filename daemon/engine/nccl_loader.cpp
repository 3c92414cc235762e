#include "engine/nccl_loader.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>

namespace dpengine::engine::nccl {

std::string Library::version_text() const {
    // NCCL_VERSION(X,Y,Z) is X*10000 + Y*100 + Z from 2.9 on (X*1000 + Y*100 + Z before).
    int major = version >= 10000 ? version / 10000 : version / 1000;
    int minor = version >= 10000 ? version / 100 % 100 : version / 100 % 10;
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(version % 100);
}

std::string Library::error_text(Code result) const {
    const char* text = get_error_string ? get_error_string(result) : nullptr;
    return (text ? std::string(text) : "NCCL error") + " (" + std::to_string(static_cast<int>(result)) + ")";
}

Result<Library> open_library(const std::string& path) {
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        return Error{"cannot load NCCL (" + path + "): " + ::dlerror() +
                         "; install NCCL (libnccl2) or put the directory of libnccl.so.2 on LD_LIBRARY_PATH, "
                         "or use data_parallel.group = \"gloo\"",
                     "nccl-missing"};
    }
    Library library;  // the handle stays open for the life of the process
    library.path = path;
    std::string missing;
    auto bind = [&](auto& slot, const char* name) {
        slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(::dlsym(handle, name));
        if (!slot) missing += (missing.empty() ? "" : ", ") + std::string(name);
    };
    bind(library.get_version, "ncclGetVersion");
    bind(library.get_unique_id, "ncclGetUniqueId");
    bind(library.comm_init_rank_config, "ncclCommInitRankConfig");
    bind(library.all_reduce, "ncclAllReduce");
    bind(library.comm_get_async_error, "ncclCommGetAsyncError");
    bind(library.comm_abort, "ncclCommAbort");
    bind(library.comm_finalize, "ncclCommFinalize");
    bind(library.comm_destroy, "ncclCommDestroy");
    bind(library.get_error_string, "ncclGetErrorString");
    if (!missing.empty()) {
        ::dlclose(handle);
        return Error{path + " lacks " + missing + "; the NCCL DP group needs NCCL 2.14 or newer", "nccl-missing"};
    }
    if (auto rc = library.get_version(&library.version); rc != success) {
        return Error{"ncclGetVersion failed: " + library.error_text(rc), "nccl-missing"};
    }
    if (library.version < 21400) {
        return Error{"NCCL " + library.version_text() + " at " + path +
                         " is too old: the NCCL DP group needs 2.14 or newer (non-blocking communicators)",
                     "nccl-missing"};
    }
    return library;
}

Result<const Library*> load() {
    static std::once_flag once;
    static Library library;
    static Result<const Library*> result = Error{"not loaded", "nccl-missing"};
    std::call_once(once, [] {
        const char* configured = std::getenv("DPENGINE_NCCL_LIBRARY");
        auto opened = open_library(configured && *configured ? configured : "libnccl.so.2");
        if (!opened) {
            result = opened.error();
            return;
        }
        library = std::move(opened).value();
        result = &library;
    });
    return result;
}

}  // namespace dpengine::engine::nccl
