#include "cuda/nccl_group.hpp"

#include "cuda/cuda_handles.hpp"
#include "engine/hex.hpp"
#include "engine/nccl_loader.hpp"

#include <algorithm>
#include <cstring>
#include <sched.h>

namespace dpengine::cuda {
namespace {

using Clock = std::chrono::steady_clock;
namespace nccl = engine::nccl;
constexpr std::chrono::seconds init_timeout{30};

class NcclGroup;
NcclGroup* active = nullptr;  // the group the rank is in; the backend's steps use it

class NcclGroup final : public engine::DpGroup {
public:
    NcclGroup(const nccl::Library& library, std::chrono::milliseconds timeout) : nccl_(library), timeout_(timeout) {}

    ~NcclGroup() override {
        if (active == this) active = nullptr;
        // Abort rather than finalize: finalize waits for the peers, which may be gone. The
        // members still in a collective with this one see it fail and time out.
        if (comm_) nccl_.comm_abort(comm_);
        if (host_value_) {
            cudaStreamSynchronize(stream_.get());  // nothing copies into it any more
            cudaFreeHost(host_value_);
        }
    }

    Status init(const engine::GroupSpec& spec, engine::RendezvousChannel& channel) {
        const auto deadline = Clock::now() + timeout_;
        if (auto made = stream_.create(); !made) return made;
        auto buffer = DeviceBuffer::allocate(sizeof(int64_t), "the NCCL group");
        if (!buffer) return buffer.error();
        value_ = std::move(buffer).value();
        // Pinned: a copy to pageable memory would block the thread until the all-reduce
        // before it finishes, past every deadline, when a member is gone.
        if (auto e = cudaHostAlloc(reinterpret_cast<void**>(&host_value_), sizeof(int64_t), cudaHostAllocDefault);
            e != cudaSuccess) {
            host_value_ = nullptr;
            return Error{"allocating pinned host memory for the NCCL group failed: " + cuda_text(e), "group-failed"};
        }

        nccl::UniqueId id{};
        const std::string key = "nccl-unique-id";
        if (spec.index == 0) {
            if (auto rc = nccl_.get_unique_id(&id); rc != nccl::success)
                return Error{"ncclGetUniqueId failed: " + nccl_.error_text(rc), "group-failed"};
            if (auto set = channel.set(key, engine::to_hex(&id, sizeof id)); !set) return set.error();
        } else {
            auto text = channel.get(key, deadline);
            if (!text) return text.error();
            auto bytes = engine::from_hex(*text);
            if (!bytes) return bytes.error();
            if (bytes->size() != sizeof id)
                return Error{"the NCCL unique id from the head has the wrong size", "malformed"};
            std::memcpy(&id, bytes->data(), sizeof id);
        }
        nccl::Config config;
        config.blocking = 0;  // non-blocking: every wait below is ours, with a deadline
        auto rc =
            nccl_.comm_init_rank_config(&comm_, static_cast<int>(spec.size), id, static_cast<int>(spec.index), &config);
        if (rc != nccl::success && rc != nccl::in_progress) {
            comm_ = nullptr;
            return Error{"ncclCommInitRankConfig failed: " + nccl_.error_text(rc), "group-failed"};
        }
        // Forming a communicator probes the machine's topology and takes seconds, far longer
        // than a collective: it gets at least init_timeout.
        if (auto ready = wait_comm(std::max(deadline, Clock::now() + init_timeout), "forming the NCCL communicator");
            !ready)
            return ready;
        active = this;
        return Ok{};
    }

    Result<int64_t> all_reduce_sum(int64_t value) override {
        if (!failed_.empty()) return Error{failed_, "group-failed"};
        *host_value_ = value;
        cudaStream_t stream = stream_.get();
        cudaMemcpyAsync(value_.as<int64_t>(), host_value_, sizeof(int64_t), cudaMemcpyHostToDevice, stream);
        if (auto done = collective(value_.as<int64_t>(), 1, nccl::int64, stream); !done) return done.error();
        cudaMemcpyAsync(host_value_, value_.as<int64_t>(), sizeof(int64_t), cudaMemcpyDeviceToHost, stream);
        if (auto done = wait_stream(stream, Clock::now() + timeout_); !done) return done.error();
        return *host_value_;
    }

    void all_reduce_floats(float* data, size_t count, cudaStream_t stream) {
        if (!failed_.empty()) return;
        if (collective(data, count, nccl::float32, stream)) (void)wait_stream(stream, Clock::now() + timeout_);
    }

private:
    Status collective(void* data, size_t count, nccl::DataType type, cudaStream_t stream) {
        auto rc = nccl_.all_reduce(data, data, count, type, nccl::sum, comm_, stream);
        if (rc == nccl::in_progress) return wait_comm(Clock::now() + timeout_, "enqueuing the all-reduce");
        if (rc != nccl::success) return fail("ncclAllReduce failed: " + nccl_.error_text(rc));
        return Ok{};
    }

    // Waits while the communicator reports ncclInProgress (init, enqueue).
    Status wait_comm(Clock::time_point deadline, const char* what) {
        for (;;) {
            nccl::Code state = nccl::success;
            nccl_.comm_get_async_error(comm_, &state);
            if (state == nccl::success) return Ok{};
            if (state != nccl::in_progress) return fail(std::string(what) + " failed: " + nccl_.error_text(state));
            if (Clock::now() >= deadline) return timed_out(what);
            sched_yield();
        }
    }

    // Waits for the stream's work, watching the communicator: a peer that died or stalled
    // shows as an async error or as the deadline passing.
    Status wait_stream(cudaStream_t stream, Clock::time_point deadline) {
        for (;;) {
            auto e = cudaStreamQuery(stream);
            if (e == cudaSuccess) return Ok{};
            if (e != cudaErrorNotReady) return fail("the NCCL all-reduce's stream failed: " + cuda_text(e));
            nccl::Code state = nccl::success;
            nccl_.comm_get_async_error(comm_, &state);
            if (state != nccl::success && state != nccl::in_progress)
                return fail("the NCCL all-reduce failed: " + nccl_.error_text(state));
            if (Clock::now() >= deadline) return timed_out("the NCCL all-reduce");
            sched_yield();
        }
    }

    Error timed_out(const char* what) {
        return fail(std::string(what) + " did not complete within data_parallel.group_timeout (" +
                    std::to_string(timeout_.count()) + " ms): a member died or stalled");
    }

    // The communicator is unusable from here on: abort it (which also ends its kernels, so
    // the stream drains) and remember why.
    Error fail(std::string message) {
        if (failed_.empty()) failed_ = message;
        if (comm_) {
            nccl_.comm_abort(comm_);
            comm_ = nullptr;
        }
        if (active == this) active = nullptr;
        return Error{std::move(message), "group-failed"};
    }

    const nccl::Library& nccl_;
    std::chrono::milliseconds timeout_;
    nccl::Comm comm_ = nullptr;
    Stream stream_;
    DeviceBuffer value_;
    int64_t* host_value_ = nullptr;  // pinned
    std::string failed_;
};

}  // namespace

Result<std::unique_ptr<engine::DpGroup>> make_nccl_group(const engine::GroupSpec& spec,
                                                         engine::RendezvousChannel& channel) {
    if (bound_device() < 0) {
        return Error{
            "the NCCL DP group needs the rank's GPU, and the cuda backend has bound none; "
            "set engine.backend = \"cuda\" or data_parallel.group = \"gloo\"",
            "group-failed"};
    }
    auto library = engine::nccl::load();
    if (!library) return library.error();
    if (auto e = cudaSetDevice(bound_device()); e != cudaSuccess)
        return Error{"cudaSetDevice for the NCCL group failed: " + cuda_text(e), "group-failed"};
    auto group = std::make_unique<NcclGroup>(**library, spec.timeout);
    if (auto ready = group->init(spec, channel); !ready) return ready.error();
    return std::unique_ptr<engine::DpGroup>(std::move(group));
}

void all_reduce_activations(float* data, size_t count, cudaStream_t stream) {
    if (active) active->all_reduce_floats(data, count, stream);
}

}  // namespace dpengine::cuda
