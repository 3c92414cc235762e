// RAII owners of the CUDA runtime and cuBLAS handles the cuda backend module uses, and the
// module's process-wide state: the GPU this rank bound.
#pragma once

#include "core/error.hpp"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>
#include <utility>

namespace dpengine::cuda {

inline std::string cuda_text(cudaError_t e) {
    return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")";
}

inline std::string cublas_text(cublasStatus_t s) {
    return std::string(cublasGetStatusString(s)) + " (" + std::to_string(static_cast<int>(s)) + ")";
}

// Device memory.
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        std::swap(ptr_, o.ptr_);
        std::swap(bytes_, o.bytes_);
        return *this;
    }
    ~DeviceBuffer() {
        if (ptr_) cudaFree(ptr_);
    }

    static Result<DeviceBuffer> allocate(size_t bytes, const std::string& what) {
        DeviceBuffer b;
        if (auto e = cudaMalloc(&b.ptr_, bytes); e != cudaSuccess) {
            cudaGetLastError();  // clear the sticky-free error state
            return Error{"allocating " + std::to_string(bytes >> 20) + " MiB of GPU memory for " + what +
                             " failed: " + cuda_text(e) + "; lower engine.gpu_memory_fraction or the model shape",
                         "config"};
        }
        b.bytes_ = bytes;
        return b;
    }

    template <class T>
    T* as() const {
        return static_cast<T*>(ptr_);
    }
    size_t bytes() const { return bytes_; }

private:
    void* ptr_ = nullptr;
    size_t bytes_ = 0;
};

class Stream {
public:
    Stream() = default;
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    ~Stream() {
        if (stream_) cudaStreamDestroy(stream_);
    }
    Status create() {
        if (auto e = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking); e != cudaSuccess)
            return Error{"creating a CUDA stream failed: " + cuda_text(e), "no-gpu"};
        return Ok{};
    }
    cudaStream_t get() const { return stream_; }

private:
    cudaStream_t stream_ = nullptr;
};

class BlasHandle {
public:
    BlasHandle() = default;
    BlasHandle(const BlasHandle&) = delete;
    BlasHandle& operator=(const BlasHandle&) = delete;
    ~BlasHandle() {
        if (handle_) cublasDestroy(handle_);
    }
    Status create(cudaStream_t stream) {
        if (auto s = cublasCreate(&handle_); s != CUBLAS_STATUS_SUCCESS)
            return Error{"cublasCreate failed: " + cublas_text(s), "no-gpu"};
        cublasSetStream(handle_, stream);
        return Ok{};
    }
    cublasHandle_t get() const { return handle_; }

private:
    cublasHandle_t handle_ = nullptr;
};

// The device the rank's backend bound (-1: none yet); the NCCL group forms on it.
int& bound_device();

}  // namespace dpengine::cuda
