// dpengine-dp-group-bench: the per-step cost of lockstep mode's synchronisation, with the rank
// program's own Lockstep loop and gloo group. N processes (forked) form a group through a
// rendezvous directory; rank 0 runs one long request on the synthetic backend (0 ms steps),
// the others step on dummy batches. Prints "key: value" lines: steps per second of rank 0
// alone without any collective, then in lockstep with the all-reduce every K steps, and the
// difference per step in microseconds.
//
// usage: dpengine-dp-group-bench [--ranks N] [--steps S] [--interval K]... [--address A]
//                                [--library 1]   (also measure gloo's all-reduce: "_library" keys)
#include "engine/gloo_group.hpp"
#include "engine/lockstep.hpp"
#include "engine/synthetic.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace fs = std::filesystem;
using namespace dpengine;
using namespace dpengine::engine;
using Clock = std::chrono::steady_clock;

namespace {

// The rendezvous store as files in one directory (the rank program uses the head instead).
class DirectoryChannel : public RendezvousChannel {
public:
    explicit DirectoryChannel(fs::path dir) : dir_(std::move(dir)) {}
    Status set(const std::string& key, const std::string& value) override {
        fs::path tmp = dir_ / (key + ".tmp" + std::to_string(getpid()));
        std::ofstream(tmp) << value;
        fs::rename(tmp, dir_ / key);
        return Ok{};
    }
    Result<std::string> get(const std::string& key, Clock::time_point deadline) override {
        while (Clock::now() < deadline) {
            std::ifstream in(dir_ / key);
            if (in) {
                std::stringstream s;
                s << in.rdbuf();
                return s.str();
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        return Error{"rendezvous timed out on key " + key, "group-timeout"};
    }

private:
    fs::path dir_;
};

class BenchLink : public Lockstep::Link {
public:
    explicit BenchLink(fs::path dir) : channel_(std::move(dir)) {}
    void send(const wire::Message&) override {}
    RendezvousChannel& rendezvous(uint64_t group_epoch) override {
        fs::path dir = dir_for(group_epoch);
        channel_ = DirectoryChannel(dir);
        return channel_;
    }
    static fs::path base;
    static fs::path dir_for(uint64_t epoch) { return base / std::to_string(epoch); }

private:
    DirectoryChannel channel_;
};
fs::path BenchLink::base;

std::unique_ptr<StepLoop> make_loop() {
    return std::make_unique<StepLoop>(std::make_unique<SyntheticBackend>(std::chrono::nanoseconds(0)), 256, 1u << 30);
}

SequenceRequest long_request(uint32_t steps) {
    SequenceRequest sequence;
    sequence.id = 1;
    sequence.prompt = "benchmark";
    sequence.max_tokens = steps;
    return sequence;
}

// Rank 0's steps per second without a group.
double alone(uint32_t steps) {
    auto loop = make_loop();
    loop->add(long_request(steps));
    TokenOutputs out;
    auto t0 = Clock::now();
    while (loop->has_work()) {
        out.items.clear();
        loop->step(out);
    }
    return steps / std::chrono::duration<double>(Clock::now() - t0).count();
}

// One process of the lockstep run; returns rank 0's steps per second (others return 0).
double lockstep_member(uint32_t rank, uint32_t ranks, uint32_t steps, uint32_t interval, uint64_t epoch,
                       const std::string& address, bool library) {
    Lockstep::Settings settings;
    settings.rank = rank;
    settings.sync_interval = interval;
    settings.timeout = std::chrono::milliseconds(30000);
    settings.bind_address = address;
    GroupFactory factory = [library](const GroupSpec& spec, RendezvousChannel& channel) {
        GroupSpec s = spec;
        if (library) s.star_limit = 0;  // gloo's own all-reduce, as large groups use
        return make_gloo_group(s, channel);
    };
    Lockstep lockstep(settings, factory);
    auto loop = make_loop();
    if (rank == 0) loop->add(long_request(steps));
    wire::GroupForm form;
    form.group_epoch = epoch;
    form.kind = "gloo";
    for (uint32_t r = 0; r < ranks; ++r) form.members.push_back(r);
    form.wave = 1;
    lockstep.on_group_form(form);
    BenchLink link(BenchLink::dir_for(epoch));
    TokenOutputs out;
    lockstep.advance(*loop, out, link);  // forms the group (every member waits for the others)
    auto t0 = Clock::now();
    for (;;) {
        out.items.clear();
        lockstep.advance(*loop, out, link);
        auto state = lockstep.report().state;
        if (state == "paused") break;
        if (state == "failed") {
            std::fprintf(stderr, "rank %u: the group failed\n", rank);
            std::exit(1);
        }
    }
    double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    return rank == 0 ? steps / seconds : 0;
}

}  // namespace

int main(int argc, char** argv) {
    uint32_t ranks = 4, steps = 20000;
    std::vector<uint32_t> intervals;
    std::string address = "127.0.0.1";
    bool with_library = false;
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string a = argv[i];
        if (a == "--ranks") ranks = static_cast<uint32_t>(std::atoi(argv[i + 1]));
        else if (a == "--steps") steps = static_cast<uint32_t>(std::atoi(argv[i + 1]));
        else if (a == "--interval") intervals.push_back(static_cast<uint32_t>(std::atoi(argv[i + 1])));
        else if (a == "--address") address = argv[i + 1];
        else if (a == "--library") with_library = std::string(argv[i + 1]) == "1";
        else {
            std::fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (intervals.empty()) intervals = {1, 32};
    char tmpl[] = "/tmp/dpengine-dp-group-bench-XXXXXX";
    if (!mkdtemp(tmpl)) return 1;
    BenchLink::base = tmpl;

    double base = alone(steps);
    std::printf("ranks: %u\nsteps: %u\nsteps_per_s_alone: %.0f\n", ranks, steps, base);
    std::fflush(stdout);
    uint64_t epoch = 0;
    std::vector<std::pair<uint32_t, bool>> runs;
    for (uint32_t k : intervals) runs.emplace_back(k, false);
    if (with_library)
        for (uint32_t k : intervals) runs.emplace_back(k, true);
    for (auto [k, library] : runs) {
        const char* suffix = library ? "_library" : "";
        ++epoch;
        fs::create_directories(BenchLink::dir_for(epoch));
        int pipefd[2];
        if (pipe(pipefd) != 0) return 1;
        std::vector<pid_t> children;
        for (uint32_t r = 0; r < ranks; ++r) {
            pid_t pid = fork();
            if (pid == 0) {
                close(pipefd[0]);
                double rate = lockstep_member(r, ranks, steps, k, epoch, address, library);
                if (r == 0) {
                    if (write(pipefd[1], &rate, sizeof rate) != sizeof rate) _exit(1);
                }
                _exit(0);
            }
            children.push_back(pid);
        }
        close(pipefd[1]);
        double rate = 0;
        bool got = read(pipefd[0], &rate, sizeof rate) == sizeof rate;
        close(pipefd[0]);
        bool ok = got;
        for (pid_t pid : children) {
            int status = 0;
            waitpid(pid, &status, 0);
            ok = ok && WIFEXITED(status) && WEXITSTATUS(status) == 0;
        }
        if (!ok) {
            std::fprintf(stderr, "the lockstep run with interval %u failed\n", k);
            fs::remove_all(tmpl);
            return 1;
        }
        double overhead_us = (1.0 / rate - 1.0 / base) * 1e6;
        std::printf("steps_per_s_k%u%s: %.0f\nsync_overhead_us_per_step_k%u%s: %.2f\n", k, suffix, rate, k, suffix,
                    overhead_us);
        std::fflush(stdout);
    }
    fs::remove_all(tmpl);
    return 0;
}
