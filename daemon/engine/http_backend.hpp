// The http backend: each rank starts one OpenAI-compatible inference server (vLLM,
// llama-server, ...) on its GPU, bound to loopback, supervises it, and forwards the head's
// requests to it as they came: the same POST path and body, on loopback connections kept alive
// and reused (an abort closes its request's connection, so the server sees the client go).
// The server's answer is relayed as it is: its status and Content-Type with the first piece,
// a text/event-stream body event by event in the server's bytes, any other body whole. The
// rank answers only what it cannot relay (code "bad-upstream"). An ABORT closes the upstream
// connection; at most engine.max_concurrency requests are forwarded at once and the rest wait
// in the rank. Every engine.health_interval the rank checks engine.health_path and reads the
// server's queue and KV cache use (GET /metrics, else llama-server's GET /slots).
//
// The server's death or engine.health_failures failed health checks in a row end the rank
// (exit 1, reason "backend-exited" / "backend-unhealthy"), and the node supervisor restarts
// it. A server that never becomes healthy within engine.ready_timeout, or exits before it
// does, is a configuration error: the rank exits 78 and is not restarted (dpengined.toml(5)).
#pragma once

#include "core/error.hpp"
#include "core/wire.hpp"
#include "engine.hpp"

#include <memory>
#include <string>
#include <vector>

namespace dpengine::engine {

// How one rank runs its server: the expanded command line and its complete environment.
struct LaunchPlan {
    std::vector<std::string> argv;
    std::vector<std::string> environment;  // "NAME=value", as the server gets it
    std::string gpu;                       // CUDA_VISIBLE_DEVICES for the server
    std::string command_line;              // argv joined for messages
};

// Expands CONFIG's command and env for IDENTITY and PORT over the INHERITED environment.
// The rank's GPU is entry local_rank of an inherited CUDA_VISIBLE_DEVICES list, else the local
// rank itself; engine.env may set CUDA_VISIBLE_DEVICES to something else, which then wins.
Result<LaunchPlan> plan_launch(const wire::EngineConfig& config, const RankIdentity& identity, uint16_t port,
                               const std::vector<std::string>& inherited);

// Picks a free loopback port, starts the server and begins watching it.
Result<std::unique_ptr<Engine>> make_http_engine(const wire::EngineConfig& config, const RankIdentity& identity);

}  // namespace dpengine::engine
