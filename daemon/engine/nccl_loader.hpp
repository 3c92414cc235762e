// NCCL loaded at run time: dlopen("libnccl.so.2") and the few entry points the NCCL DP group
// calls, declared here (as vLLM's pynccl does), so that one build runs on nodes with and
// without NCCL and the build needs no NCCL headers.
#pragma once

#include "core/error.hpp"

#include <cstddef>
#include <string>

struct CUstream_st;  // cuda_runtime.h's stream type (cudaStream_t is CUstream_st*)

namespace dpengine::engine::nccl {

// The declarations of nccl.h this project uses; values as in NCCL 2.x.
using Comm = struct ncclComm*;
using Stream = ::CUstream_st*;  // cudaStream_t
struct UniqueId {
    char internal[128];
};
enum Code : int {
    success = 0,
    unhandled_cuda_error = 1,
    system_error = 2,
    internal_error = 3,
    invalid_argument = 4,
    invalid_usage = 5,
    remote_error = 6,
    in_progress = 7,
};
enum DataType : int { int64 = 4, float32 = 7 };
enum RedOp : int { sum = 0 };

// ncclConfig_t as NCCL 2.14 introduced it; NCCL reads the fields a config's version has and
// defaults the newer ones.
struct Config {
    size_t size = sizeof(Config);
    unsigned int magic = 0xcafebeef;
    unsigned int version = 21400;  // NCCL_VERSION(2, 14, 0)
    int blocking = 1;
    int cga_cluster_size = -2147483648;  // NCCL_CONFIG_UNDEF_INT
    int min_ctas = -2147483648;
    int max_ctas = -2147483648;
    const char* net_name = nullptr;
};

struct Library {
    Code (*get_version)(int* version) = nullptr;
    Code (*get_unique_id)(UniqueId* id) = nullptr;
    Code (*comm_init_rank_config)(Comm* comm, int nranks, UniqueId id, int rank, Config* config) = nullptr;
    Code (*all_reduce)(const void* send, void* recv, size_t count, DataType type, RedOp op, Comm comm,
                       Stream stream) = nullptr;
    Code (*comm_get_async_error)(Comm comm, Code* error) = nullptr;
    Code (*comm_abort)(Comm comm) = nullptr;
    Code (*comm_finalize)(Comm comm) = nullptr;
    Code (*comm_destroy)(Comm comm) = nullptr;
    const char* (*get_error_string)(Code result) = nullptr;

    int version = 0;   // as ncclGetVersion reports it, e.g. 22809
    std::string path;  // what was loaded

    // "2.28.9"
    std::string version_text() const;
    std::string error_text(Code result) const;
};

// Opens the library at PATH (a name for the loader path, or a file) and binds the entry
// points. The handle stays open for the life of the process.
Result<Library> open_library(const std::string& path);

// Loads the library once per process ($DPENGINE_NCCL_LIBRARY, else libnccl.so.2 from the
// loader path). Errors say what is missing and how to provide it.
Result<const Library*> load();

}  // namespace dpengine::engine::nccl
