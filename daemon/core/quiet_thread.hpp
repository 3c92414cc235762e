// Helper threads that never receive the process's signals. The daemon's main thread takes
// SIGTERM, SIGINT and SIGHUP (asio signal sets, or the rank's handler, whose job is to break
// its poll with EINTR). A signal is delivered to any thread that does not block it, so a
// helper thread left open to them would see its blocking ZeroMQ call fail with EINTR, which
// cppzmq throws, and an uncaught exception ends the process mid-shutdown. A thread inherits
// its creator's signal mask, so the mask is blocked around the creation only.
#pragma once

#include <csignal>
#include <pthread.h>
#include <utility>

namespace dpengine {

template <class Thread, class Function>
Thread start_quiet_thread(Function&& function) {
    sigset_t all, previous;
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, &previous);
    Thread thread(std::forward<Function>(function));
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
    return thread;
}

}  // namespace dpengine
