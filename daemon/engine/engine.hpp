// What the rank's main loop drives: OpenAI requests in (the endpoint and the client's body),
// their responses out (status, content type, body bytes or whole SSE events), load figures,
// and the engine's own state. Every engine answers a request the way an OpenAI-compatible
// server does, errors included. NativeEngine (the OpenAI formats over the continuous-batching
// StepLoop and a token Backend) is one; the http backend, which forwards each request to the
// server it supervises and relays its answer, is another.
#pragma once

#include "core/error.hpp"
#include "core/wire.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace dpengine::engine {

// Where the engine stands. A starting engine keeps the rank's heartbeats going (start-up may
// take minutes); a failed one ends the rank with `exit_code` after reporting `message`
// under `reason_code`.
struct EngineState {
    enum class Phase { starting, ready, failed } phase = Phase::ready;
    std::string reason_code;
    std::string message;
    int exit_code = 0;
};

class Engine {
public:
    virtual ~Engine() = default;
    // Shown in READY and status, e.g. "cpu (synthetic)".
    virtual std::string device() const = 0;
    // Requests the rank takes at once (READY's max_batch).
    virtual uint32_t capacity() const = 0;
    virtual EngineState state() = 0;

    // Takes the request; its response comes out of step() (an error response too).
    virtual void add(const wire::Request& request) = 0;
    // Forgets the request and stops its work (an upstream request is closed); no further
    // output is produced for it, and running()/waiting() no longer count it.
    virtual void abort(uint64_t id) = 0;
    // Forgets every request (the head that sent them is gone).
    virtual void abort_all() = 0;
    // True when step() has something to do right now (the loop then does not sleep).
    virtual bool has_work() const = 0;
    // Appends an Output for every response piece that is ready, and sets the load.
    virtual void step(wire::Outputs& out) = 0;

    // Requests being worked on, and those the rank holds back (over capacity).
    virtual uint32_t running() const = 0;
    virtual uint32_t waiting() const = 0;
    // The engine's own figures, where it reports them (Heartbeat's engine_queued,
    // kv_cache_usage), and health probes failed in a row (0: healthy).
    struct EngineLoad {
        uint32_t queued = 0;
        double kv_cache_usage = 0;
        uint32_t health_failures = 0;
    };
    virtual EngineLoad engine_load() const { return {}; }
    virtual uint64_t steps() const = 0;  // progress counter for heartbeats
    // Bytes of device memory the engine holds now, for status (see Backend::memory_used);
    // 0: not measured.
    virtual uint64_t memory_used() const { return 0; }

    // A descriptor that becomes readable when has_work() or state() may have changed without
    // a message from the head (-1: never). The loop polls it beside its socket and then calls
    // clear_wakeup().
    virtual int wakeup_fd() const { return -1; }
    virtual void clear_wakeup() {}
};

struct RankIdentity {
    uint32_t rank = 0;
    uint32_t local_rank = 0;
};

// The engine CONFIG names. Errors name the backend and the setting at fault.
Result<std::unique_ptr<Engine>> make_engine(const wire::EngineConfig& config, const RankIdentity& identity);

}  // namespace dpengine::engine
