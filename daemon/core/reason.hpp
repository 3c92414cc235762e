// Reason codes: the stable words that name why something failed or happened, in logs, metrics
// labels (dpengine_rank_events_total, dpengine_handshake_refusals_total, ...), ERROR/REFUSED
// messages on the wire, Error values and D-Bus replies. One table lists each code beside its
// meaning, the D-Bus error the daemon answers with, the exit status dpctl gives for it and
// whether trying again can help (like chrony's candm.h lists its status codes beside their
// messages). dpengined(8), REASON CODES, documents the same list; a unit test compares them.
//
// A code is named by the enum or by a string literal that is checked against the table when
// compiling (ReasonCode), so a misspelled code does not build.
#pragma once

#include "core/dpctl_exit.hpp"

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dpengine {

// The codes stay grouped, several to a line, as the table below groups them.
// clang-format off
enum class Reason : uint8_t {
    // Answers to control calls (D-Bus, dpctl).
    invalid_rank, invalid_args, not_local, bad_state, failed, denied,
    // Start-up.
    usage, config, module_missing, nccl_missing, no_gpu,
    // Refusals of HELLO / NODE_HELLO / NODE_STATUS (REFUSED) and ERROR to a registered peer.
    malformed, unknown_type, version_mismatch, not_registered, rank_out_of_range, config_mismatch, rank_not_owned,
    node_not_registered, duplicate_rank, replaced, node_mismatch, duplicate_node, rank_conflict, too_many_nodes,
    duplicate_hello, unexpected_type, group_store_full, group_key_not_owned,
    // Connections the head drops without an answer.
    unauthorized_key, mechanism_mismatch, curve_handshake_failed, protocol_error, handshake_incomplete, rate_limited,
    registration_timeout,
    // A rank's failures and recoveries (dpengine_rank_events_total).
    init_failed, backend_exited, backend_unhealthy, engine_unhealthy, handshake_timeout, heartbeat_timeout, hung,
    group_stalled, connection_lost, rank_exited, rank_replaced, rank_stopped, node_stopped, rank_misbehaved,
    restart_budget_exhausted, restarted, rejoined,
    // A headless node and the head.
    head_lost, head_grace_expired, head_back,
    // The DP group, inside a rank.
    group_failed, group_timeout, superseded,
    // Requests the head cannot place or finish.
    rank_lost, rank_unreachable, no_ready_rank, below_min_ranks, timeout, shutdown,
    // Connections the front-end closes to protect itself (dpengine_http_connections_closed_total).
    connection_limit, client_limit, slow_client, out_of_descriptors,
};
// clang-format on

struct ReasonEntry {
    Reason reason;
    std::string_view code;
    std::string_view meaning;
    std::string_view bus_error;  // the D-Bus error a control call answers with; "": not a control answer
    int dpctl_exit;              // dpctl's exit status for that error (dpctl(1), EXIT STATUS)
    bool retryable;              // trying the same thing again later can succeed (false for recoveries)
};

namespace reason_table {
inline constexpr std::string_view invalid_args_error = "org.freedesktop.DBus.Error.InvalidArgs";
inline constexpr std::string_view access_denied_error = "org.freedesktop.DBus.Error.AccessDenied";
// The dpctl exit status of codes that answer no control call: dpctl never sees them as errors.
inline constexpr int no_control_answer = dpctl_exit::failure;
}  // namespace reason_table

// In the order of the enum (checked below).
inline constexpr ReasonEntry reasons[] = {
    {Reason::invalid_rank, "invalid-rank", "no such rank: not below the DP size", "org.dpengine1.Error.InvalidRank",
     dpctl_exit::rejected, false},
    {Reason::invalid_args, "invalid-args", "arguments the daemon cannot act on (an unknown node, ranks out of range)",
     reason_table::invalid_args_error, dpctl_exit::rejected, false},
    {Reason::not_local, "not-local", "the rank or the action belongs to another node: ask that node's daemon",
     "org.dpengine1.Error.NotLocal", dpctl_exit::rejected, false},
    {Reason::bad_state, "bad-state", "not possible in the rank's or node's state now", "org.dpengine1.Error.BadState",
     dpctl_exit::rejected, true},
    {Reason::failed, "failed", "the change failed; the message says why (e.g. a refused reload)",
     "org.dpengine1.Error.Failed", dpctl_exit::failure, true},
    {Reason::denied, "denied", "the daemon cannot tell who is calling", reason_table::access_denied_error,
     dpctl_exit::access_denied, false},

    {Reason::usage, "usage", "a bad command line", "", reason_table::no_control_answer, false},
    {Reason::config, "config", "a bad configuration, or a node that cannot run it", "", reason_table::no_control_answer,
     false},
    {Reason::module_missing, "module-missing", "a module the configuration needs is not installed", "",
     reason_table::no_control_answer, false},
    {Reason::nccl_missing, "nccl-missing", "NCCL cannot be loaded, or is too old", "", reason_table::no_control_answer,
     false},
    {Reason::no_gpu, "no-gpu", "the cuda backend finds no GPU it can use for the rank", "",
     reason_table::no_control_answer, false},

    {Reason::malformed, "malformed", "a message that does not decode", "", reason_table::no_control_answer, false},
    {Reason::unknown_type, "unknown-type", "a message type this protocol version does not have", "",
     reason_table::no_control_answer, false},
    {Reason::version_mismatch, "version-mismatch", "the peer's protocol major version differs", "",
     reason_table::no_control_answer, false},
    {Reason::not_registered, "not-registered", "a message before HELLO (or NODE_HELLO) was accepted", "",
     reason_table::no_control_answer, true},
    {Reason::rank_out_of_range, "rank-out-of-range", "a rank not below data_parallel.size", "",
     reason_table::no_control_answer, false},
    {Reason::config_mismatch, "config-mismatch", "the peer's DP size or model differs from the head's", "",
     reason_table::no_control_answer, false},
    {Reason::rank_not_owned, "rank-not-owned", "the rank is not among those the node's key or block holds", "",
     reason_table::no_control_answer, false},
    {Reason::node_not_registered, "node-not-registered", "the node holds no ranks yet: its daemon has not registered",
     "", reason_table::no_control_answer, true},
    {Reason::duplicate_rank, "duplicate-rank", "another node already serves the rank", "",
     reason_table::no_control_answer, true},
    {Reason::replaced, "replaced", "a newer registration of the rank replaced this connection", "",
     reason_table::no_control_answer, false},
    {Reason::node_mismatch, "node-mismatch", "the node's name differs from its key's, or is the head's", "",
     reason_table::no_control_answer, false},
    {Reason::duplicate_node, "duplicate-node", "a node of that name is already connected", "",
     reason_table::no_control_answer, true},
    {Reason::rank_conflict, "rank-conflict", "the ranks the node asks for overlap another node's", "",
     reason_table::no_control_answer, false},
    {Reason::too_many_nodes, "too-many-nodes", "the head has no room for another node", "",
     reason_table::no_control_answer, false},
    {Reason::duplicate_hello, "duplicate-hello", "a second HELLO on a registered connection", "",
     reason_table::no_control_answer, false},
    {Reason::unexpected_type, "unexpected-type", "a message the peer may not send", "", reason_table::no_control_answer,
     false},
    {Reason::group_store_full, "group-store-full", "a GROUP_KV beyond the rendezvous store's bounds", "",
     reason_table::no_control_answer, false},
    {Reason::group_key_not_owned, "group-key-not-owned", "a GROUP_KV that sets another member's key", "",
     reason_table::no_control_answer, false},

    {Reason::unauthorized_key, "unauthorized-key", "a CURVE key not in security.authorized_keys", "",
     reason_table::no_control_answer, false},
    {Reason::mechanism_mismatch, "mechanism-mismatch", "a plaintext peer on a CURVE socket, or the reverse", "",
     reason_table::no_control_answer, false},
    {Reason::curve_handshake_failed, "curve-handshake-failed", "a CURVE handshake that does not verify", "",
     reason_table::no_control_answer, false},
    {Reason::protocol_error, "protocol-error", "bytes that break ZMTP", "", reason_table::no_control_answer, false},
    {Reason::handshake_incomplete, "handshake-incomplete", "a connection closed or silent before its handshake ended",
     "", reason_table::no_control_answer, true},
    {Reason::rate_limited, "rate-limited", "messages over handshake.refusal_rate_limit, ignored", "",
     reason_table::no_control_answer, true},
    {Reason::registration_timeout, "registration-timeout", "no HELLO or NODE_HELLO within handshake.register_timeout",
     "", reason_table::no_control_answer, true},

    {Reason::init_failed, "init-failed", "the rank's engine failed to start", "", reason_table::no_control_answer,
     false},
    {Reason::backend_exited, "backend-exited", "the http backend's server exited", "", reason_table::no_control_answer,
     true},
    {Reason::backend_unhealthy, "backend-unhealthy", "the http backend's server failed its health checks", "",
     reason_table::no_control_answer, true},
    {Reason::engine_unhealthy, "engine-unhealthy", "a ready rank's engine failed a health probe", "",
     reason_table::no_control_answer, true},
    {Reason::handshake_timeout, "handshake-timeout", "no HELLO or READY within the handshake's time limits", "",
     reason_table::no_control_answer, true},
    {Reason::heartbeat_timeout, "heartbeat-timeout", "no heartbeat for handshake.heartbeat_timeout", "",
     reason_table::no_control_answer, true},
    {Reason::hung, "hung", "heartbeats without progress for handshake.hang_timeout with requests in flight", "",
     reason_table::no_control_answer, true},
    {Reason::group_stalled, "group-stalled", "a lockstep member withheld its rendezvous keys", "",
     reason_table::no_control_answer, true},
    {Reason::connection_lost, "connection-lost", "ZeroMQ dropped the rank's connection", "",
     reason_table::no_control_answer, true},
    {Reason::rank_exited, "rank-exited", "the rank's process exited", "", reason_table::no_control_answer, true},
    {Reason::rank_replaced, "rank-replaced", "a new registration of the rank replaced the old one", "",
     reason_table::no_control_answer, true},
    {Reason::rank_stopped, "rank-stopped", "an operator stopped the rank with requests in flight", "",
     reason_table::no_control_answer, true},
    {Reason::node_stopped, "node-stopped", "the rank's headless node stopped in order with requests in flight", "",
     reason_table::no_control_answer, true},
    {Reason::rank_misbehaved, "rank-misbehaved", "a response over its bounds", "", reason_table::no_control_answer,
     true},
    {Reason::restart_budget_exhausted, "restart-budget-exhausted", "supervision.restart_budget is used up", "",
     reason_table::no_control_answer, false},
    {Reason::restarted, "restarted", "a local rank's process started again", "", reason_table::no_control_answer,
     false},
    {Reason::rejoined, "rejoined", "a lost rank is READY again", "", reason_table::no_control_answer, false},

    {Reason::head_lost, "head-lost", "nothing from the head for three heartbeat intervals", "",
     reason_table::no_control_answer, true},
    {Reason::head_grace_expired, "head-grace-expired", "supervision.head_grace_period ended without the head", "",
     reason_table::no_control_answer, true},
    {Reason::head_back, "head-back", "the head answers again", "", reason_table::no_control_answer, false},

    {Reason::group_failed, "group-failed", "the DP group could not form or a collective failed", "",
     reason_table::no_control_answer, true},
    {Reason::group_timeout, "group-timeout", "the DP group did not form within data_parallel.group_timeout", "",
     reason_table::no_control_answer, true},
    {Reason::superseded, "superseded", "a newer formation of the DP group replaced this one", "",
     reason_table::no_control_answer, true},

    {Reason::rank_lost, "rank-lost", "the request's rank failed while serving it", "", reason_table::no_control_answer,
     true},
    {Reason::rank_unreachable, "rank-unreachable", "the request could not be sent to its rank", "",
     reason_table::no_control_answer, true},
    {Reason::no_ready_rank, "no-ready-rank", "no rank is ready to take the request", "",
     reason_table::no_control_answer, true},
    {Reason::below_min_ranks, "below-min-ranks", "fewer ranks are ready than data_parallel.min_ranks", "",
     reason_table::no_control_answer, true},
    {Reason::timeout, "timeout", "the request did not finish within frontend.request_timeout", "",
     reason_table::no_control_answer, true},
    {Reason::shutdown, "shutdown", "the daemon is stopping: requests still in flight end", "",
     reason_table::no_control_answer, true},

    {Reason::connection_limit, "connection-limit", "frontend.max_connections reached", "",
     reason_table::no_control_answer, true},
    {Reason::client_limit, "client-limit", "frontend.max_connections_per_client reached", "",
     reason_table::no_control_answer, true},
    {Reason::slow_client, "slow-client", "a client that did not read its responses", "",
     reason_table::no_control_answer, false},
    {Reason::out_of_descriptors, "out-of-descriptors", "the daemon ran out of file descriptors", "",
     reason_table::no_control_answer, true},
};

namespace reason_table {
constexpr bool in_enum_order() {
    for (size_t i = 0; i < std::size(reasons); ++i) {
        if (static_cast<size_t>(reasons[i].reason) != i) return false;
    }
    return true;
}
static_assert(in_enum_order(), "reasons[] lists every Reason once, in the enum's order");
static_assert(std::size(reasons) == static_cast<size_t>(Reason::out_of_descriptors) + 1,
              "every Reason has an entry in reasons[]");

// Not constexpr on purpose: ReasonCode's check calls it for a literal that is no code, which makes
// that literal a compile error that names this function.
inline Reason no_such_reason_code() { return Reason::failed; }
}  // namespace reason_table

constexpr const ReasonEntry& entry(Reason reason) { return reasons[static_cast<size_t>(reason)]; }
constexpr std::string_view code(Reason reason) { return entry(reason).code; }

constexpr std::optional<Reason> reason_from_code(std::string_view code) {
    for (const auto& e : reasons) {
        if (e.code == code) return e.reason;
    }
    return std::nullopt;
}

// The reason whose control answer is the D-Bus error `name` (e.g. for dpctl's exit status).
constexpr std::optional<Reason> reason_from_bus_error(std::string_view name) {
    for (const auto& e : reasons) {
        if (!e.bus_error.empty() && e.bus_error == name) return e.reason;
    }
    return std::nullopt;
}

// A reason code where one is passed: the enum, or a literal that the compiler checks against the
// table (a misspelled "duplicate-rnak" is a compile error, not a metric label nobody reads).
class ReasonCode {
public:
    constexpr ReasonCode(Reason reason) : reason_(reason) {}
    consteval ReasonCode(const char* literal) : reason_(checked(literal)) {}

    constexpr Reason reason() const { return reason_; }
    constexpr std::string_view str() const { return code(reason_); }
    operator std::string() const { return std::string(str()); }
    friend constexpr bool operator==(ReasonCode a, ReasonCode b) { return a.reason_ == b.reason_; }

private:
    static consteval Reason checked(const char* literal) {
        auto found = reason_from_code(literal);
        return found ? *found : reason_table::no_such_reason_code();  // not a code: does not compile
    }
    Reason reason_;
};

}  // namespace dpengine
