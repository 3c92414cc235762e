#include "wait.hpp"

#include <algorithm>
#include <cmath>

namespace dpctl {

void wait_for(BusClient& bus, const Options& options, const Wait& wait, const Check& check) {
    using Clock = std::chrono::steady_clock;
    const auto deadline =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(options.timeout_s));
    bus.watch_ranks(wait.ranks, wait.what);
    for (;;) {
        Progress p = check(bus.ranks());
        if (p.outcome == Progress::done) return;
        if (p.outcome == Progress::failed) throw Failure(exit_status::failure, wait.what + " failed: " + p.message);
        const auto now = Clock::now();
        if (now >= deadline) {
            throw Failure(exit_status::failure,
                          wait.what + " did not complete within " + std::to_string(std::lround(options.timeout_s)) +
                              " s (" + p.message + "); the daemon goes on in the background: see 'dpctl status'");
        }
        bus.wait_for_change(wait.recheck ? std::min(deadline, now + *wait.recheck) : deadline, wait.what);
    }
}

}  // namespace dpctl
