// The cuda backend: a synthetic-weights model (vLLM's dummy-weights mode) run with real
// kernels on the rank's GPU. The model is an embedding table (vocab_size x hidden_size),
// num_layers square layers and the tied output head; each step is, for the batch's B
// sequences: B embedding rows, num_layers cuBLAS GEMMs (hidden x hidden by hidden x B), in
// lockstep mode with an NCCL group an all-reduce of the activations (the expert-parallel
// combine), the logits GEMM (vocab x hidden by hidden x B) and a greedy argmax per sequence.
// The next step's input token of a sequence is the synthetic backend's token for its position
// (so prompts and seeds matter); its output text is the word of the argmax token. Plain C++
// against the CUDA runtime and cuBLAS: no CUDA compiler is needed.
#include "cuda/cuda_backend.hpp"

#include "cuda/cuda_handles.hpp"
#include "cuda/nccl_group.hpp"
#include "engine/synthetic.hpp"

#include <cmath>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <random>

namespace dpengine::cuda {
namespace {

constexpr size_t mib = size_t{1} << 20;
// Left free on the GPU beside the rank's budget: cuBLAS's workspace and the CUDA context.
constexpr size_t runtime_reserve = 256 * mib;

std::string visible_devices() {
    const char* v = std::getenv("CUDA_VISIBLE_DEVICES");
    return v ? std::string("CUDA_VISIBLE_DEVICES=") + v : "CUDA_VISIBLE_DEVICES unset";
}

// A GPU failure in the middle of a step (an Xid, a lost device) leaves nothing to recover in
// this process: say what failed and end the rank; the supervisor restarts it with back-off.
[[noreturn]] void fatal(const std::string& what) {
    std::fprintf(stderr, "cuda backend: %s; the GPU is unusable, ending the rank\n", what.c_str());
    std::fflush(stderr);
    std::_Exit(1);
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) fatal(std::string(what) + ": " + cuda_text(e));
}

void check(cublasStatus_t s, const char* what) {
    if (s != CUBLAS_STATUS_SUCCESS) fatal(std::string(what) + ": " + cublas_text(s));
}

// Which device this rank uses: engine.gpus[local rank], else the local rank itself, among the
// devices CUDA_VISIBLE_DEVICES leaves visible.
Result<int> choose_device(const wire::EngineConfig& config, uint32_t local_rank) {
    int count = 0;
    if (auto e = cudaGetDeviceCount(&count); e != cudaSuccess || count == 0) {
        cudaGetLastError();
        if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0)) {
            return Error{"engine.backend = \"cuda\": no CUDA device is visible on this node (" + visible_devices() +
                             "); check nvidia-smi and CUDA_VISIBLE_DEVICES, or run this node with "
                             "engine.backend = \"synthetic\"",
                         "no-gpu"};
        }
        return Error{"engine.backend = \"cuda\": CUDA cannot use this node's GPUs (" + cuda_text(e) +
                         "): no NVIDIA driver, or one too old for CUDA " + std::to_string(CUDART_VERSION / 1000) +
                         "; install the NVIDIA driver (libcuda.so.1), or run this node with "
                         "engine.backend = \"synthetic\"",
                     "no-gpu"};
    }
    uint32_t device = local_rank;
    if (!config.gpus.empty()) {
        if (local_rank >= config.gpus.size() && !config.gpu_sharing) {
            return Error{"engine.gpus lists " + std::to_string(config.gpus.size()) +
                             " device(s), but this is local rank " + std::to_string(local_rank) +
                             "; list one device per local rank, or set "
                             "engine.gpu_sharing = true to let ranks share them",
                         "config"};
        }
        device = config.gpus[local_rank % config.gpus.size()];
        if (device >= static_cast<uint32_t>(count)) {
            return Error{"engine.gpus names device " + std::to_string(device) + " for local rank " +
                             std::to_string(local_rank) + ", but only " + std::to_string(count) +
                             " device(s) are visible (" + visible_devices() + "); fix engine.gpus",
                         "config"};
        }
    } else if (local_rank >= static_cast<uint32_t>(count)) {
        if (!config.gpu_sharing) {
            return Error{"local rank " + std::to_string(local_rank) + " needs a GPU of its own, but only " +
                             std::to_string(count) + " device(s) are visible (" + visible_devices() +
                             "); lower data_parallel.size_local, or set engine.gpu_sharing = true to let ranks "
                             "share GPUs",
                         "config"};
        }
        device = local_rank % static_cast<uint32_t>(count);
    }
    return static_cast<int>(device);
}

}  // namespace

int& bound_device() {
    static int device = -1;
    return device;
}

class CudaBackend final : public engine::Backend {
public:
    Status init(const wire::EngineConfig& config, uint32_t local_rank) {
        hidden_ = config.hidden_size ? config.hidden_size : 1024;
        layers_ = config.num_layers ? config.num_layers : 4;
        vocab_ = config.vocab_size ? config.vocab_size : 4096;
        rows_ = config.max_batch ? config.max_batch : 256;
        double fraction = config.gpu_memory_fraction > 0 ? config.gpu_memory_fraction : 0.9;

        auto device = choose_device(config, local_rank);
        if (!device) return device.error();
        device_ = *device;
        if (auto e = cudaSetDevice(device_); e != cudaSuccess)
            return Error{"cudaSetDevice(" + std::to_string(device_) + ") failed: " + cuda_text(e), "no-gpu"};
        cudaDeviceProp props{};
        if (auto e = cudaGetDeviceProperties(&props, device_); e != cudaSuccess)
            return Error{"cudaGetDeviceProperties failed: " + cuda_text(e), "no-gpu"};
        name_ = std::string(props.name) + " (cuda:" + std::to_string(device_) + ")";
        bound_device() = device_;

        if (auto made = stream_.create(); !made) return made;
        if (auto made = blas_.create(stream_.get()); !made) return made;

        size_t free_bytes = 0, total_bytes = 0;
        if (auto e = cudaMemGetInfo(&free_bytes, &total_bytes); e != cudaSuccess)
            return Error{"cudaMemGetInfo failed: " + cuda_text(e), "no-gpu"};
        const size_t budget = static_cast<size_t>(fraction * static_cast<double>(total_bytes));
        const size_t h = hidden_, floats = sizeof(float);
        const size_t model_bytes = (layers_ * h * h + size_t{vocab_} * h) * floats;
        const size_t work_bytes = (2 * rows_ * h + size_t{vocab_} * rows_) * floats + rows_ * sizeof(int);
        if (model_bytes + work_bytes + runtime_reserve > budget) {
            return Error{"the model (engine.hidden_size " + std::to_string(hidden_) + ", num_layers " +
                             std::to_string(layers_) + ", vocab_size " + std::to_string(vocab_) + ", max_batch " +
                             std::to_string(rows_) + ") needs " + std::to_string((model_bytes + work_bytes) / mib) +
                             " MiB, more than engine.gpu_memory_fraction (" + std::to_string(fraction) + ") of " +
                             name_ + "'s " + std::to_string(total_bytes / mib) +
                             " MiB allows; raise the fraction or shrink the model",
                         "config"};
        }
        if (budget > free_bytes) {
            return Error{"engine.gpu_memory_fraction (" + std::to_string(fraction) + ") asks for " +
                             std::to_string(budget / mib) + " MiB of " + name_ + ", which has " +
                             std::to_string(free_bytes / mib) +
                             " MiB free (other processes or ranks use it); "
                             "lower engine.gpu_memory_fraction (ranks sharing a GPU need fractions that add up "
                             "to less than 1)",
                         "config"};
        }
        if (auto made = allocate(model_bytes, work_bytes, budget); !made) return made;
        return Ok{};
    }

    std::string device() const override { return name_; }

    bool admit(engine::Sequence& seq) override {
        // The cache holds max_batch sequences, and the step loop runs at most that many.
        synthetic_.admit(seq);
        return true;
    }

    std::optional<uint32_t> count_prompt_tokens(std::string_view prompt) const override {
        return synthetic_.count_prompt_tokens(prompt);
    }

    void release(engine::Sequence&) override {}

    void step(std::span<engine::Sequence* const> batch, std::vector<std::string>& pieces) override {
        const uint32_t count = static_cast<uint32_t>(std::min<size_t>(batch.size(), rows_));
        for (uint32_t i = 0; i < count; ++i) {
            const engine::Sequence& s = *batch[i];
            uint32_t token = engine::SyntheticBackend::token(s.backend_slot, s.seed, s.generated) % vocab_;
            check(cublasScopy(blas_.get(), static_cast<int>(hidden_), embedding_.as<float>() + size_t{token} * hidden_,
                              1, activations(0) + size_t{i} * hidden_, 1),
                  "cublasScopy (embedding)");
        }
        forward(count);
        logits_and_argmax(count);
        for (uint32_t i = 0; i < count; ++i) {
            pieces[i].assign(" ");
            pieces[i].append(engine::SyntheticBackend::word(static_cast<uint32_t>(tokens_[i] - 1)));
        }
        // Sequences past max_batch (never with the step loop, which admits at most that many)
        // repeat their last word rather than go without a token.
        for (size_t i = count; i < batch.size(); ++i) pieces[i] = count ? pieces[0] : " ";
    }

    void dummy_step() override {
        forward(1);
        check(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
    }

    uint64_t memory_used() const override { return allocated_; }

private:
    float* activations(int which) const { return (which == 0 ? x_ : y_).as<float>(); }

    Status allocate(size_t model_bytes, size_t work_bytes, size_t budget) {
        const size_t h = hidden_;
        auto take = [&](DeviceBuffer& into, size_t bytes, const char* what) -> Status {
            auto b = DeviceBuffer::allocate(bytes, what);
            if (!b) return b.error();
            into = std::move(b).value();
            allocated_ += bytes;
            return Ok{};
        };
        if (auto ok = take(weights_, layers_ * h * h * sizeof(float), "the weights"); !ok) return ok;
        if (auto ok = take(embedding_, size_t{vocab_} * h * sizeof(float), "the embedding"); !ok) return ok;
        if (auto ok = take(x_, rows_ * h * sizeof(float), "the activations"); !ok) return ok;
        if (auto ok = take(y_, rows_ * h * sizeof(float), "the activations"); !ok) return ok;
        if (auto ok = take(logits_, size_t{vocab_} * rows_ * sizeof(float), "the logits"); !ok) return ok;
        if (auto ok = take(argmax_, rows_ * sizeof(int), "the argmax"); !ok) return ok;
        // The rest of the budget is the cache, allocated (and so resident) up front.
        const size_t cache = budget - model_bytes - work_bytes - runtime_reserve;
        if (cache > 0) {
            if (auto ok = take(cache_, cache, "the cache"); !ok) return ok;
        }
        tokens_.assign(rows_, 1);

        // Synthetic weights: one random layer (uniform, scaled so that activations keep their
        // size through the layers) copied into every layer, and a random embedding, made in
        // pieces of at most 16 Mi floats so that a large model needs little host memory.
        std::mt19937 random(12345);
        std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
        const size_t piece = size_t{16} << 20;
        std::vector<float> host(std::min(piece, std::max(h * h, size_t{vocab_} * h)));
        auto fill = [&](float* device_at, size_t count, float scale, const char* what) -> Status {
            for (size_t done = 0; done < count;) {
                size_t n = std::min(host.size(), count - done);
                for (size_t i = 0; i < n; ++i) host[i] = uniform(random) * scale;
                if (auto e = cudaMemcpy(device_at + done, host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
                    e != cudaSuccess)
                    return Error{std::string("copying ") + what + " to the GPU failed: " + cuda_text(e), "no-gpu"};
                done += n;
            }
            return Ok{};
        };
        if (auto ok = fill(weights_.as<float>(), h * h, std::sqrt(3.0f / static_cast<float>(h)), "the weights"); !ok)
            return ok;
        for (uint32_t l = 1; l < layers_; ++l) {
            if (auto e = cudaMemcpy(weights_.as<float>() + l * h * h, weights_.as<float>(), h * h * sizeof(float),
                                    cudaMemcpyDeviceToDevice);
                e != cudaSuccess)
                return Error{"copying the weights on the GPU failed: " + cuda_text(e), "no-gpu"};
        }
        if (auto ok = fill(embedding_.as<float>(), size_t{vocab_} * h, 1.0f, "the embedding"); !ok) return ok;
        if (auto e = cudaMemset(x_.as<float>(), 0, x_.bytes()); e != cudaSuccess)
            return Error{"clearing the activations failed: " + cuda_text(e), "no-gpu"};
        return Ok{};
    }

    // The layers over the first `count` rows, then (in an NCCL group) the combine over every
    // row: each rank all-reduces the same max_batch rows, busy or not. Leaves the result in x_.
    void forward(uint32_t count) {
        const float alpha = 1.0f, beta = 0.0f;
        const int h = static_cast<int>(hidden_);
        for (uint32_t l = 0; l < layers_; ++l) {
            const float* in = (l % 2 == 0 ? x_ : y_).as<float>();
            float* out = (l % 2 == 0 ? y_ : x_).as<float>();
            check(cublasSgemm(blas_.get(), CUBLAS_OP_N, CUBLAS_OP_N, h, static_cast<int>(count), h, &alpha,
                              weights_.as<float>() + size_t{l} * hidden_ * hidden_, h, in, h, &beta, out, h),
                  "cublasSgemm (layer)");
        }
        if (layers_ % 2 == 1) {
            check(cudaMemcpyAsync(x_.as<float>(), y_.as<float>(), size_t{count} * hidden_ * sizeof(float),
                                  cudaMemcpyDeviceToDevice, stream_.get()),
                  "cudaMemcpyAsync (activations)");
        }
        all_reduce_activations(x_.as<float>(), size_t{rows_} * hidden_, stream_.get());
    }

    // Logits for the first `count` rows and the index of each one's largest logit (1-based,
    // as cuBLAS gives it) into tokens_.
    void logits_and_argmax(uint32_t count) {
        const float alpha = 1.0f, beta = 0.0f;
        check(cublasSgemm(blas_.get(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(vocab_), static_cast<int>(count),
                          static_cast<int>(hidden_), &alpha, embedding_.as<float>(), static_cast<int>(hidden_),
                          x_.as<float>(), static_cast<int>(hidden_), &beta, logits_.as<float>(),
                          static_cast<int>(vocab_)),
              "cublasSgemm (logits)");
        check(cublasSetPointerMode(blas_.get(), CUBLAS_POINTER_MODE_DEVICE), "cublasSetPointerMode");
        for (uint32_t i = 0; i < count; ++i) {
            check(cublasIsamax(blas_.get(), static_cast<int>(vocab_), logits_.as<float>() + size_t{i} * vocab_, 1,
                               argmax_.as<int>() + i),
                  "cublasIsamax");
        }
        check(cublasSetPointerMode(blas_.get(), CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
        check(cudaMemcpyAsync(tokens_.data(), argmax_.as<int>(), count * sizeof(int), cudaMemcpyDeviceToHost,
                              stream_.get()),
              "cudaMemcpyAsync (tokens)");
        check(cudaStreamSynchronize(stream_.get()), "cudaStreamSynchronize");
    }

    uint32_t hidden_ = 0, layers_ = 0, vocab_ = 0, rows_ = 0;
    int device_ = -1;
    std::string name_;
    engine::SyntheticBackend synthetic_{std::chrono::nanoseconds(0)};  // prompt tokens, input tokens
    Stream stream_;
    BlasHandle blas_;
    DeviceBuffer weights_, embedding_, x_, y_, logits_, argmax_, cache_;
    std::vector<int> tokens_;
    size_t allocated_ = 0;
};

Result<std::unique_ptr<engine::Backend>> make_cuda_backend(const wire::EngineConfig& config, uint32_t local_rank) {
    auto backend = std::make_unique<CudaBackend>();
    if (auto ready = backend->init(config, local_rank); !ready) return ready.error();
    return std::unique_ptr<engine::Backend>(std::move(backend));
}

}  // namespace dpengine::cuda
