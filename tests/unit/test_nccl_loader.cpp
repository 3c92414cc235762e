// The NCCL loader against the machine's NCCL: it finds libnccl.so.2 (from the loader path, or
// the CUDA toolkit's lib64 where one is installed), binds every entry point the NCCL DP group
// calls and reports the library's version. Skipped, with a message, where there is no NCCL.
#include "engine/nccl_loader.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <dlfcn.h>
#include <regex>
#include <unistd.h>

using namespace dpengine::engine;

TEST_CASE("NCCL loader: finds libnccl.so.2 and reports its version", "[nccl]") {
    constexpr const char* toolkit_copy = "/usr/local/cuda/lib64/libnccl.so.2";
    bool on_path = false;
    if (void* probe = dlopen("libnccl.so.2", RTLD_LAZY | RTLD_LOCAL)) {
        on_path = true;
        dlclose(probe);
    }
    if (!on_path && std::getenv("DPENGINE_NCCL_LIBRARY") == nullptr) {
        if (access(toolkit_copy, R_OK) != 0) {
            WARN("SKIP: no libnccl.so.2 on the loader path or in /usr/local/cuda/lib64");
            return;
        }
        setenv("DPENGINE_NCCL_LIBRARY", toolkit_copy, 0);
    }
    auto library = nccl::load();
    INFO((library ? std::string() : library.error().message));
    REQUIRE(library);
    const nccl::Library& lib = **library;
    CHECK(lib.version >= 21400);
    CHECK(std::regex_match(lib.version_text(), std::regex(R"(2\.\d+\.\d+)")));
    CHECK(lib.error_text(nccl::invalid_argument).find("(4)") != std::string::npos);
    WARN("NCCL " << lib.version_text() << " from " << lib.path);
    // A unique id needs no GPU: it names this host's bootstrap socket.
    nccl::UniqueId id{};
    CHECK(lib.get_unique_id(&id) == nccl::success);
}

TEST_CASE("NCCL loader: a missing library is a clear error", "[nccl]") {
    auto library = nccl::open_library("/nonexistent/libnccl.so.2");
    REQUIRE_FALSE(library);
    CHECK(library.error().code == "nccl-missing");
    CHECK(library.error().message.find("/nonexistent/libnccl.so.2") != std::string::npos);
    CHECK(library.error().message.find("data_parallel.group = \"gloo\"") != std::string::npos);
}
