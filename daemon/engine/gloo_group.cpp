#include "engine/gloo_group.hpp"

#include "engine/hex.hpp"

#include <gloo/allreduce.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/buffer.h>

#include <map>
#include <stdexcept>
#include <vector>
#include <mutex>

namespace dpengine::engine {
namespace {

using Clock = std::chrono::steady_clock;

// A rendezvous failure inside gloo's connectFullMesh, which only knows exceptions; turned back
// into an Error value at the edge of this module.
struct StoreFailure : std::runtime_error {
    explicit StoreFailure(Error e) : std::runtime_error(e.message), error(std::move(e)) {}
    Error error;
};

// gloo's rendezvous store backed by the head's key-value store (GROUP_KV over the rank's
// connection). Every wait ends at one deadline for the whole rendezvous.
class HeadStore : public gloo::rendezvous::Store {
public:
    HeadStore(RendezvousChannel& channel, Clock::time_point deadline) : channel_(channel), deadline_(deadline) {}

    void set(const std::string& key, const std::vector<char>& data) override {
        if (auto done = channel_.set(key, to_hex(data.data(), data.size())); !done) throw StoreFailure(done.error());
    }

    std::vector<char> get(const std::string& key) override {
        if (auto it = cache_.find(key); it != cache_.end()) return it->second;
        auto value = channel_.get(key, deadline_);
        if (!value) throw StoreFailure(value.error());
        auto bytes = from_hex(*value);
        if (!bytes) throw StoreFailure(bytes.error());
        return cache_[key] = std::move(bytes).value();
    }

    void wait(const std::vector<std::string>& keys) override {
        for (const auto& key : keys) get(key);
    }

    void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds&) override { wait(keys); }

private:
    RendezvousChannel& channel_;
    Clock::time_point deadline_;
    std::map<std::string, std::vector<char>> cache_;
};

// One TCP device per bind address for the life of the process: it owns the listening socket
// and gloo's event loop thread, which every group epoch shares.
std::shared_ptr<gloo::transport::Device> device_for(const std::string& address) {
    static std::mutex mutex;
    static std::map<std::string, std::shared_ptr<gloo::transport::Device>> devices;
    std::lock_guard lock(mutex);
    auto& device = devices[address];
    if (!device) {
        gloo::transport::tcp::attr attr;
        attr.hostname = address;
        device = gloo::transport::tcp::CreateDevice(attr);
    }
    return device;
}

// The all-reduce lockstep mode runs every step: one int64 summed over the members. Small groups
// send their value to every other member at once and add up what arrives, which costs one
// network hop per step instead of the 2(n-1) of a ring; large groups use gloo's all-reduce
// (bcube: 2 log n hops, O(n) messages per step instead of O(n^2)).
class GlooGroup : public DpGroup {
public:
    GlooGroup(std::shared_ptr<gloo::Context> context, const GroupSpec& spec)
        : context_(std::move(context)),
          timeout_(spec.timeout),
          direct_(spec.size <= spec.direct_exchange_limit),
          values_(spec.size, 0) {
        if (direct_) {
            // Synchronous pairs: the waiting thread reads its socket itself, instead of gloo's
            // event loop thread reading and then waking it (two context switches per value).
            constexpr int slot = 1;
            sends_.resize(spec.size);
            recvs_.resize(spec.size);
            for (int peer = 0; peer < context_->size; ++peer) {
                if (peer == context_->rank) continue;
                auto& pair = context_->getPair(peer);
                pair->setSync(true, false);
                sends_[peer] = pair->createSendBuffer(slot, &mine_, sizeof mine_);
                recvs_[peer] = pair->createRecvBuffer(slot, &values_[peer], sizeof(int64_t));
            }
        }
    }

    Result<int64_t> all_reduce_sum(int64_t value) override {
        try {
            return direct_ ? exchange(value) : library_all_reduce(value);
        } catch (const std::exception& e) {
            return Error{std::string("the DP group's all-reduce failed: ") + e.what(), "group-failed"};
        }
    }

private:
    int64_t exchange(int64_t value) {
        const int size = context_->size, me = context_->rank;
        mine_ = value;
        for (int peer = 0; peer < size; ++peer) {
            if (peer != me) sends_[peer]->send();
        }
        int64_t sum = value;
        for (int peer = 0; peer < size; ++peer) {
            if (peer == me) continue;
            recvs_[peer]->waitRecv();
            sum += values_[peer];
        }
        for (int peer = 0; peer < size; ++peer) {
            if (peer != me) sends_[peer]->waitSend();
        }
        return sum;
    }

    int64_t library_all_reduce(int64_t value) {
        int64_t sum = value;
        gloo::AllreduceOptions options(context_);
        options.setAlgorithm(gloo::AllreduceOptions::Algorithm::BCUBE);
        options.setOutput(&sum, 1);
        options.setReduceFunction(
            static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<int64_t>));
        options.setTimeout(timeout_);
        gloo::allreduce(options);
        return sum;
    }

    std::shared_ptr<gloo::Context> context_;
    std::chrono::milliseconds timeout_;
    bool direct_;
    int64_t mine_ = 0;
    std::vector<int64_t> values_;
    std::vector<std::unique_ptr<gloo::transport::Buffer>> sends_;  // per peer, over mine_
    std::vector<std::unique_ptr<gloo::transport::Buffer>> recvs_;  // per peer, into values_[peer]
};

// A group of one rank: nothing to agree with.
class SoloGroup : public DpGroup {
public:
    Result<int64_t> all_reduce_sum(int64_t value) override { return value; }
};

}  // namespace

Result<std::unique_ptr<DpGroup>> make_gloo_group(const GroupSpec& spec, RendezvousChannel& channel) {
    if (spec.size <= 1) return std::unique_ptr<DpGroup>(std::make_unique<SoloGroup>());
    try {
        auto device = device_for(spec.bind_address);
        auto context = std::make_shared<gloo::rendezvous::Context>(static_cast<int>(spec.index), static_cast<int>(spec.size));
        context->setTimeout(spec.timeout);
        HeadStore store(channel, Clock::now() + spec.timeout);
        context->connectFullMesh(store, device);
        return std::unique_ptr<DpGroup>(std::make_unique<GlooGroup>(std::move(context), spec));
    } catch (const StoreFailure& e) {
        return e.error;
    } catch (const std::exception& e) {
        return Error{std::string("forming the gloo DP group on ") + spec.bind_address + " failed: " + e.what(),
                     "group-failed"};
    }
}

}  // namespace dpengine::engine
