#include "engine/gloo_group.hpp"

#include "engine/hex.hpp"

#include <gloo/allreduce.h>
#include <gloo/common/error.h>
#include <gloo/math.h>
#include <gloo/context.h>
#include <gloo/transport/context.h>
#include <gloo/transport/pair.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/buffer.h>

#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace dpengine::engine {
namespace {

using Clock = std::chrono::steady_clock;

// A gloo context whose full mesh is wired through the head's rendezvous store one pair at a
// time: member i publishes its end of the pair with member j under "pair-i-j", and j fetches
// only that entry. Each member sends and fetches n-1 small values, so a formation moves O(n^2)
// bytes through the head; gloo's own connectFullMesh has every member fetch every member's whole
// address list, O(n^3) bytes (gigabytes at DP 256, on every re-formation).
class HeadMeshContext : public gloo::Context {
public:
    using gloo::Context::Context;

    Status connect(RendezvousChannel& channel, const std::shared_ptr<gloo::transport::Device>& device,
                   Clock::time_point deadline) {
        auto mesh = device->createContext(rank, size);
        mesh->setTimeout(getTimeout());
        for (int peer = 0; peer < size; ++peer) {
            if (peer == rank) continue;
            auto address = mesh->createPair(peer)->address().bytes();
            if (auto done = channel.set(pair_key(rank, peer), to_hex(address.data(), address.size())); !done) {
                return done.error();
            }
        }
        // Peers in rank order on every member, as gloo's connectFullMesh does: each pair's
        // connecting end and accepting end then reach it in an order that cannot deadlock.
        for (int peer = 0; peer < size; ++peer) {
            if (peer == rank) continue;
            auto value = channel.get(pair_key(peer, rank), deadline);
            if (!value) return value.error();
            auto address = from_hex(*value);
            if (!address) return address.error();
            mesh->getPair(peer)->connect(*address);
        }
        device_ = device;
        transportContext_ = std::move(mesh);
        return Ok{};
    }

private:
    static std::string pair_key(int from, int to) { return "pair-" + std::to_string(from) + "-" + std::to_string(to); }
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
// use a star: every member sends its value to member 0, which adds them up and sends the sum
// back. That is 2(n-1) messages per step, where sending each value to every other member costs
// n(n-1). On a loaded machine each message means a process waiting for a CPU, so the star
// measured 56-63 µs per step at DP 4 on 2 cores where the all-to-all took 102 µs (and 186 µs
// against 388 µs at DP 8, 334 against 1431 at DP 16; README.md, "Performance"). Large groups use gloo's
// all-reduce (bcube: 2 log n hops) so that no member handles O(n) messages per step.
class GlooGroup : public DpGroup {
public:
    GlooGroup(std::shared_ptr<gloo::Context> context, const GroupSpec& spec)
        : context_(std::move(context)),
          timeout_(spec.timeout),
          star_(spec.size <= spec.star_limit),
          values_(spec.size, 0) {
        if (!star_) return;
        // Synchronous pairs: the waiting thread reads its socket itself, instead of gloo's event
        // loop thread reading and then waking it (two context switches per value).
        constexpr int to_root = 1, from_root = 2;  // the slots of the two directions
        const bool root = context_->rank == 0;
        values_out_.resize(spec.size);
        values_in_.resize(spec.size);
        for (int peer = 0; peer < context_->size; ++peer) {
            if (peer == context_->rank || (!root && peer != 0)) continue;
            auto& pair = context_->getPair(peer);
            pair->setSync(true, false);
            if (root) {
                values_in_[peer] = pair->createRecvBuffer(to_root, &values_[peer], sizeof(int64_t));
                values_out_[peer] = pair->createSendBuffer(from_root, &sum_, sizeof sum_);
            } else {
                values_out_[peer] = pair->createSendBuffer(to_root, &mine_, sizeof mine_);
                values_in_[peer] = pair->createRecvBuffer(from_root, &sum_, sizeof sum_);
            }
        }
    }

    Result<int64_t> all_reduce_sum(int64_t value) override {
        try {
            return star_ ? star_all_reduce(value) : library_all_reduce(value);
        } catch (const std::exception& e) {
            return Error{std::string("the DP group's all-reduce failed: ") + e.what(), "group-failed"};
        }
    }

private:
    int64_t star_all_reduce(int64_t value) {
        const int size = context_->size;
        if (context_->rank == 0) {
            sum_ = value;
            for (int peer = 1; peer < size; ++peer) {
                values_in_[peer]->waitRecv();
                sum_ += values_[peer];
            }
            for (int peer = 1; peer < size; ++peer) values_out_[peer]->send();
            for (int peer = 1; peer < size; ++peer) values_out_[peer]->waitSend();
            return sum_;
        }
        mine_ = value;
        values_out_[0]->send();
        values_in_[0]->waitRecv();
        values_out_[0]->waitSend();
        return sum_;
    }

    int64_t library_all_reduce(int64_t value) {
        int64_t sum = value;
        gloo::AllreduceOptions options(context_);
        options.setAlgorithm(gloo::AllreduceOptions::Algorithm::BCUBE);
        options.setOutput(&sum, 1);
        options.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<int64_t>));
        options.setTimeout(timeout_);
        gloo::allreduce(options);
        return sum;
    }

    std::shared_ptr<gloo::Context> context_;
    std::chrono::milliseconds timeout_;
    bool star_;
    int64_t mine_ = 0;             // a member's value, sent to member 0
    int64_t sum_ = 0;              // the step's sum: added up by member 0, received by the others
    std::vector<int64_t> values_;  // member 0: each member's value
    // Per peer (member 0: every other member; the others: member 0 only), over mine_/sum_ and
    // into values_[peer]/sum_.
    std::vector<std::unique_ptr<gloo::transport::Buffer>> values_out_;
    std::vector<std::unique_ptr<gloo::transport::Buffer>> values_in_;
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
        auto context = std::make_shared<HeadMeshContext>(static_cast<int>(spec.index), static_cast<int>(spec.size));
        context->setTimeout(spec.timeout);
        if (auto connected = context->connect(channel, device, Clock::now() + spec.timeout); !connected) {
            return connected.error();
        }
        return std::unique_ptr<DpGroup>(std::make_unique<GlooGroup>(std::move(context), spec));
    } catch (const std::exception& e) {
        return Error{std::string("forming the gloo DP group on ") + spec.bind_address + " failed: " + e.what(),
                     "group-failed"};
    }
}

}  // namespace dpengine::engine
