// dpengine-cuda-bench: the cuda backend's figures on a GPU machine (bench/gpu drives it). It
// loads the cuda backend module as dpengine-rank does and prints "key: value" lines:
//
//   --mode bare      tokens/s of the backend's own kernels for --batch sequences in a bare
//                    loop (Backend::step called back to back, no scheduler, no daemon): the
//                    baseline the engine's tokens/s is compared with.
//   --mode lockstep  lockstep mode's per-step synchronisation cost with an NCCL group of one
//                    rank (one GPU): steps/s of the rank's StepLoop alone, then driven by the
//                    rank's Lockstep loop with the all-reduce every step, the difference per
//                    step in µs, and beside it a raw ncclAllReduce of the same size (one int64)
//                    on a communicator of its own, measured in the same run.
//
// usage: dpengine-cuda-bench --mode bare|lockstep [--batch B] [--steps S] [--hidden H]
//                            [--layers L] [--vocab V] [--fraction F]
#include "engine/module_loader.hpp"
#include "engine/lockstep.hpp"
#include "engine/nccl_loader.hpp"
#include "engine/step_loop.hpp"

#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

using namespace dpengine;
using namespace dpengine::engine;
using Clock = std::chrono::steady_clock;

namespace {

// The rendezvous store in memory: a group of one rank only publishes.
class MemoryChannel : public RendezvousChannel {
public:
    Status set(const std::string& key, const std::string& value) override {
        values_[key] = value;
        return Ok{};
    }
    Result<std::string> get(const std::string& key, Clock::time_point) override {
        if (auto it = values_.find(key); it != values_.end()) return it->second;
        return Error{"no key " + key, "group-timeout"};
    }

private:
    std::map<std::string, std::string> values_;
};

class BenchLink : public Lockstep::Link {
public:
    void send(const wire::Message&) override {}
    RendezvousChannel& rendezvous(uint64_t) override { return channel_; }

private:
    MemoryChannel channel_;
};

[[noreturn]] void die(const std::string& what) {
    std::fprintf(stderr, "dpengine-cuda-bench: %s\n", what.c_str());
    std::exit(1);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

SequenceRequest request(uint64_t id, uint32_t tokens) {
    SequenceRequest sequence;
    sequence.id = id;
    sequence.prompt = "benchmark request " + std::to_string(id);
    sequence.max_tokens = tokens;
    sequence.seed = id;
    return sequence;
}

void bare(const CudaModule& module, const wire::EngineConfig& config, uint32_t batch, uint32_t steps) {
    auto backend = module.make_backend(config, 0);
    if (!backend) die(backend.error().message);
    std::vector<std::unique_ptr<Sequence>> owned;
    std::vector<Sequence*> seqs;
    for (uint32_t i = 0; i < batch; ++i) {
        auto s = std::make_unique<Sequence>();
        s->id = i;
        s->prompt = "benchmark request " + std::to_string(i);
        s->seed = i;
        (*backend)->admit(*s);
        seqs.push_back(s.get());
        owned.push_back(std::move(s));
    }
    std::vector<std::string> pieces(batch);
    for (uint32_t w = 0; w < 20; ++w) (*backend)->step(seqs, pieces);  // warm-up
    auto t0 = Clock::now();
    for (uint32_t n = 0; n < steps; ++n) {
        (*backend)->step(seqs, pieces);
        for (auto* s : seqs) ++s->generated;
    }
    double elapsed = seconds_since(t0);
    std::printf("device: %s\nbatch: %u\nsteps: %u\nbare_steps_per_s: %.1f\nbare_tokens_per_s: %.0f\n",
                (*backend)->device().c_str(), batch, steps, steps / elapsed, double(steps) * batch / elapsed);
}

// Steps per second of a StepLoop running one request of `steps` tokens, driven directly or by
// Lockstep (with an NCCL group of one).
double loop_rate(std::unique_ptr<StepLoop>& loop, Lockstep* lockstep, BenchLink& link, uint32_t steps, uint64_t id) {
    loop->add(request(id, steps));
    TokenOutputs out;
    auto t0 = Clock::now();
    uint64_t before = loop->steps();
    while (loop->has_work()) {
        out.items.clear();
        if (lockstep) {
            lockstep->advance(*loop, out, link);
            if (lockstep->report().state == "failed") die("the NCCL group failed during the run");
        } else {
            loop->step(out);
        }
    }
    return double(loop->steps() - before) / seconds_since(t0);
}

// A raw ncclAllReduce of one int64 on a communicator of its own: the µs per call, stream
// synchronised, as the lockstep group's all-reduce is.
double raw_all_reduce_us(uint32_t calls) {
    auto lib = nccl::load();
    if (!lib) die(lib.error().message);
    const nccl::Library& n = **lib;
    nccl::UniqueId id{};
    if (n.get_unique_id(&id) != nccl::success) die("ncclGetUniqueId failed");
    nccl::Comm comm = nullptr;
    nccl::Config config;  // blocking: the plain way to call NCCL
    if (auto rc = n.comm_init_rank_config(&comm, 1, id, 0, &config); rc != nccl::success) die(n.error_text(rc));
    cudaStream_t stream = nullptr;
    cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
    int64_t* value = nullptr;
    cudaMalloc(&value, sizeof *value);
    int64_t* host = nullptr;  // pinned, as the group's
    cudaHostAlloc(reinterpret_cast<void**>(&host), sizeof *host, cudaHostAllocDefault);
    *host = 1;
    auto once = [&] {
        cudaMemcpyAsync(value, host, sizeof *host, cudaMemcpyHostToDevice, stream);
        n.all_reduce(value, value, 1, nccl::int64, nccl::sum, comm, stream);
        cudaMemcpyAsync(host, value, sizeof *host, cudaMemcpyDeviceToHost, stream);
        cudaStreamSynchronize(stream);
    };
    for (int w = 0; w < 100; ++w) once();
    auto t0 = Clock::now();
    for (uint32_t i = 0; i < calls; ++i) once();
    double us = seconds_since(t0) * 1e6 / calls;
    cudaFree(value);
    cudaFreeHost(host);
    cudaStreamDestroy(stream);
    n.comm_destroy(comm);
    return us;
}

void lockstep(const CudaModule& module, const wire::EngineConfig& config, uint32_t steps) {
    auto backend = module.make_backend(config, 0);
    if (!backend) die(backend.error().message);
    auto loop = std::make_unique<StepLoop>(std::move(backend).value(), config.max_batch, 1u << 30);
    BenchLink link;
    loop_rate(loop, nullptr, link, 50, 1);  // warm-up
    double alone = loop_rate(loop, nullptr, link, steps, 2);

    Lockstep::Settings settings;
    settings.timeout = std::chrono::milliseconds(30000);
    settings.sync_interval = 1;
    Lockstep group(settings, [&](const GroupSpec& spec, RendezvousChannel& channel) {
        return module.make_nccl_group(spec, channel);
    });
    wire::GroupForm form;
    form.group_epoch = 1;
    form.kind = "nccl";
    form.members = {0};
    form.wave = 1;
    group.on_group_form(form);
    TokenOutputs out;
    group.advance(*loop, out, link);  // forms the group
    if (group.report().state != "running") die("the NCCL group did not form: " + group.report().error);
    loop_rate(loop, &group, link, 50, 3);  // warm-up
    double synced = loop_rate(loop, &group, link, steps, 4);
    double overhead_us = (1e6 / synced) - (1e6 / alone);
    double raw_us = raw_all_reduce_us(steps);
    std::printf(
        "device: %s\nsteps: %u\nsteps_per_s_alone: %.1f\nsteps_per_s_lockstep_nccl: %.1f\n"
        "lockstep_overhead_us_per_step: %.2f\nraw_nccl_all_reduce_us: %.2f\n"
        "lockstep_overhead_vs_raw_nccl: %.2f\n",
        loop->device().c_str(), steps, alone, synced, overhead_us, raw_us, overhead_us / raw_us);
}

}  // namespace

int main(int argc, char** argv) {
    std::string mode;
    uint32_t batch = 32, steps = 2000;
    wire::EngineConfig config;
    config.backend = "cuda";
    config.hidden_size = 1024;
    config.num_layers = 4;
    config.vocab_size = 4096;
    config.max_batch = 256;
    config.gpu_memory_fraction = 0.3;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        const char* v = argv[i + 1];
        if (a == "--mode") mode = v;
        else if (a == "--batch") batch = static_cast<uint32_t>(std::atoi(v));
        else if (a == "--steps") steps = static_cast<uint32_t>(std::atoi(v));
        else if (a == "--hidden") config.hidden_size = static_cast<uint32_t>(std::atoi(v));
        else if (a == "--layers") config.num_layers = static_cast<uint32_t>(std::atoi(v));
        else if (a == "--vocab") config.vocab_size = static_cast<uint32_t>(std::atoi(v));
        else if (a == "--fraction") config.gpu_memory_fraction = std::atof(v);
        else die("unknown option " + a);
    }
    if (batch == 0 || batch > config.max_batch) die("--batch must be 1 to 256");
    auto module = load_cuda_module();
    if (!module) die(module.error().message);
    if (mode == "bare") bare(**module, config, batch, steps);
    else if (mode == "lockstep") lockstep(**module, config, steps);
    else die("--mode bare or --mode lockstep");
    return 0;
}
