// The node's configuration: TOML file + drop-ins + command-line flags, validated as a whole
// before anything starts. The defaults below are the single source of the defaults; the
// shipped etc/dpengine/dpengined.toml is checked against them by a test.
#pragma once

#include "error.hpp"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace dpengine {

enum class Role { head, headless };

struct NodeSection {
    Role role = Role::head;
    std::string name;  // empty: the host name
};

struct DataParallelSection {
    // Ranks in the whole deployment. A head defaults to 1; a headless node may leave it unset
    // (it learns the size from the head) or state it, and the head refuses a mismatch.
    std::optional<uint32_t> size;
    // Ranks this node runs. Unset means "all of them" on a head (size - start_rank).
    std::optional<uint32_t> size_local;
    // The first rank this node runs. A head defaults to 0; a headless node that leaves it
    // unset gets a block of size_local ranks assigned by the head when it registers.
    std::optional<uint32_t> start_rank;
    std::string address = "127.0.0.1";  // the head's address: IPv4, IPv6 or host name
    uint16_t rpc_port = 13345;
    // The head serves only while at least this many ranks are READY; below it requests get
    // 503 and /health names the missing ranks.
    uint32_t min_ranks = 1;
    // How the ranks keep in step (head only; CONFIG carries it to every rank): "independent"
    // (each rank steps on its own) or "lockstep" (every rank steps while any has work, idle
    // ones on a dummy batch, as MoE / expert-parallel models need).
    std::string dp_sync = "independent";
    // The DP group's library in lockstep mode: "gloo", "nccl", or "auto" (nccl when the
    // backend is "cuda" and every rank has a GPU of its own, else gloo).
    std::string group = "auto";
    uint32_t sync_interval = 1;  // lockstep: steps between the group's all-reduces
    double group_timeout = 1.5;  // seconds a collective or the group's rendezvous may take
};

struct FrontendSection {
    std::string host = "0.0.0.0";
    uint16_t port = 8000;
    uint64_t max_body_bytes = 1 << 20;
    uint32_t max_connections = 16384;
    double idle_timeout = 60.0;      // seconds a keep-alive connection may sit idle
    double request_timeout = 600.0;  // seconds a request may take from arrival to its last byte
    // Most bytes of response a rank may send for one request; past it the request fails (502).
    uint64_t max_response_bytes = 64 << 20;
    // Connections one client address may hold at once; more are closed at once.
    uint32_t max_connections_per_client = 1024;
    // Output a connection may have waiting behind a write its client has not taken, and
    // seconds a write may go without the client taking a byte: past either the client is not
    // reading, so the connection closes and its requests are aborted.
    uint64_t max_buffered_output = 4 << 20;
    double write_timeout = 30.0;
    // A file of API key hashes (core/api_keys.hpp); set: every endpoint but /health needs
    // "Authorization: Bearer KEY". Empty: no keys.
    std::string api_keys;
    // PEM files: set both to serve HTTPS.
    std::string tls_certificate;
    std::string tls_key;
};

struct EngineSection {
    std::string backend = "synthetic";
    std::string model = "synthetic";  // the name clients use in "model"; others get 404
    // The name the engine serves under, when it differs from `model`: the head rewrites a
    // request's "model" to it, and nothing else of the body (empty: the same as model).
    std::string served_model_name;
    uint32_t max_batch = 256;
    double step_time_ms = 0.0;         // synthetic: time one step takes
    uint32_t default_max_tokens = 16;  // native backends: max_tokens when a request has none
    uint32_t max_model_len = 8192;     // prompt + completion tokens
    // http backend: the OpenAI-compatible server each rank starts, supervises and forwards
    // its requests to over loopback. Placeholders (core/placeholders.hpp) are expanded per rank.
    std::vector<std::string> command;        // the server's argv
    std::map<std::string, std::string> env;  // extra environment for the server
    std::string health_path = "/health";     // GET → 200 means the server is healthy
    // Once ready, the server is probed every health_interval seconds (each probe may take as
    // long); from the first failed probe the rank takes no new requests, and after
    // health_failures failures in a row the rank ends and is restarted.
    double health_interval = 2.0;
    uint32_t health_failures = 3;
    // POST paths besides /v1/completions, /v1/chat/completions and /v1/embeddings that the head
    // passes through to the engine unchanged (e.g. "/tokenize", "/v1/responses").
    std::vector<std::string> passthrough_paths;
    double ready_timeout = 240.0;    // seconds for the server's first healthy answer
    uint32_t max_concurrency = 256;  // requests forwarded at once; more wait in the rank
    // cuda backend: the model's shape (synthetic weights) and the rank's GPU.
    uint32_t hidden_size = 1024;
    uint32_t num_layers = 4;
    uint32_t vocab_size = 4096;
    double gpu_memory_fraction = 0.9;  // of the GPU's memory, for weights and cache
    std::vector<std::string> gpus;     // CUDA device per local rank; empty: local rank N → device N
    bool gpu_sharing = false;          // more ranks than devices: ranks share GPUs
};

struct HandshakeSection {
    double connect_timeout = 30.0;    // seconds from spawning a rank to its HELLO
    double init_timeout = 300.0;      // seconds from CONFIG to READY
    double ready_timeout = 600.0;     // seconds from start until every rank should be READY
    double heartbeat_interval = 1.0;  // seconds between a rank's heartbeats when idle
    double heartbeat_timeout = 3.0;   // seconds of silence after which a rank is lost
    // Seconds a rank with work may go without taking a step while its heartbeats still
    // arrive; then it is hung and is killed and restarted. Longer than the longest step.
    double hang_timeout = 60.0;
    // A peer address refused more often than this per second is ignored for refusal_mute
    // seconds (0: never).
    uint32_t refusal_rate_limit = 20;
    double refusal_mute = 10.0;
    // Seconds a connection to the rank port may take to register (an accepted HELLO or
    // NODE_HELLO); then the head closes it.
    double register_timeout = 10.0;
};

// What happens when a rank process dies: restarts with capped exponential back-off, up to a
// budget of restarts per window; past it the rank stays failed.
struct SupervisionSection {
    double restart_backoff = 0.5;  // seconds before the first restart; doubles each time
    double restart_backoff_max = 30.0;
    uint32_t restart_budget = 5;    // restarts allowed within restart_window
    double restart_window = 300.0;  // seconds
    // Headless nodes: seconds a rank keeps its engine while the head is silent; then it stops
    // (exit 75) and is started again once the head's rpc_port answers.
    double head_grace_period = 60.0;
};

// CurveZMQ for every TCP socket between nodes. Unused when all ranks are local (ipc://).
struct SecuritySection {
    std::string key = "/etc/dpengine/keys/node.key";                     // this node's secret key
    std::string authorized_keys = "/etc/dpengine/keys/authorized_keys";  // head: who may join
    std::string head_public_key;                                         // headless: the head's public key (Z85)
    bool insecure = false;  // plaintext TCP; only for isolated test networks
};

struct DaemonSection {
    std::string runtime_directory;  // empty: $RUNTIME_DIRECTORY, /run/dpengine or a private dir
    std::string engine_program;     // empty: dpengine-rank beside dpengined, else libexec
    bool strict = false;            // unknown keys are errors, not warnings
    uint32_t max_message_bytes = 16 << 20;
    double stop_timeout = 30.0;  // seconds in-flight requests may take to finish on stop
};

struct Config {
    NodeSection node;
    DataParallelSection data_parallel;
    FrontendSection frontend;
    EngineSection engine;
    HandshakeSection handshake;
    SupervisionSection supervision;
    SecuritySection security;
    DaemonSection daemon;

    // Ranks this node runs, after defaults are applied (validate() guarantees it is set).
    uint32_t size_local() const { return data_parallel.size_local.value_or(0); }
    // The first rank this node runs as configured (0 when unset: see start_rank).
    uint32_t first_local_rank() const { return data_parallel.start_rank.value_or(0); }
    // A headless node without a start rank: its ranks come from the head's assignment.
    bool assigned_by_head() const { return node.role == Role::headless && !data_parallel.start_rank; }
    // The DP size; 0 on a headless node that did not state it.
    uint32_t dp_size() const { return data_parallel.size.value_or(0); }
    // True when any rank lives on another node, which selects tcp:// instead of ipc://.
    bool has_remote_ranks() const { return node.role == Role::headless || size_local() < dp_size(); }
    // True when TCP sockets carry CURVE (the default whenever TCP is used).
    bool uses_curve() const { return has_remote_ranks() && !security.insecure; }
};

// What parse_command_line() found besides config values.
struct CommandLine {
    std::string config_path = "/etc/dpengine/dpengined.toml";
    bool config_path_given = false;
    bool check_config = false;
    bool help = false;
    bool version = false;
    bool bus_introspect = false;
    // Set by the running daemon when it reloads: the ports it holds are not probed.
    bool reload = false;
    std::vector<std::string> warnings;  // e.g. unknown keys outside strict mode
};

// Loads FILE and FILE.d/*.toml (sorted by name, later files override earlier ones).
// A missing FILE is fine when it was not named explicitly (then only defaults apply).
// Errors name the file and line: "dpengined.toml:12: data_parallel.size: expected an integer
// from 1 to 65536, got \"four\"".
// Unknown keys produce a warning per key in `warnings`, or an error when daemon.strict is
// set in the file or `strict` is true.
Status load_config_files(Config& config, const std::string& path, bool path_given, bool strict,
                         std::vector<std::string>& warnings);

// Applies one TOML document held in memory, as load_config_files applies each file; `name`
// stands for the file in errors.
Status load_config_text(Config& config, const std::string& name, const std::string& text, bool strict,
                        std::vector<std::string>& warnings);

// Parses argv. Flags (all override the file):
//   --config FILE, --check-config, --strict, -h/--help, --version,
//   -dp/--data-parallel-size N, -dpl/--data-parallel-size-local N,
//   -dpr/--data-parallel-start-rank N, --data-parallel-address ADDR,
//   --data-parallel-rpc-port PORT, --headless, --host ADDR, --port PORT,
//   --node-name NAME, --backend NAME, --model NAME (also accepted as the one positional
//   argument, as `vllm serve MODEL` has it), --step-time-ms MS, --runtime-directory DIR.
// Both "--flag value" and "--flag=value" work. Flag errors name the flag and the fix.
// The result is the effective, validated config; `cmdline` receives the rest.
Result<Config> parse_command_line(int argc, const char* const* argv, CommandLine& cmdline);

// Checks the config as a whole: size_local <= size - start_rank, start_rank < size,
// rpc_port != 0 when TCP is used, addresses parse, timeouts positive, known backend, ...
// Fills in defaults that depend on other values (size_local on a head, node name).
// `probe_ports`: a head checks that its rpc_port is free (not on reload: it holds it).
Status validate(Config& config, bool probe_ports = true);

// The effective config as TOML, for --check-config.
// The DP group library of lockstep mode, with data_parallel.group = "auto" decided: "nccl"
// when the ranks run the cuda backend each on a GPU of its own (NCCL refuses two ranks on one
// device), else "gloo". The head decides it, as every rank gets the same CONFIG; a rank that
// then finds no GPU fails with a clear error.
std::string dp_group_kind(const Config& config);

std::string to_toml(const Config& config);

// What a reload (SIGHUP, dpctl reload) does with a key whose value changed: it applies at
// once (live), it is taken and reaches each rank when that rank next starts, as the rank's
// arguments or its CONFIG carry it (rank_start), or it waits for the daemon's next start
// (restart). dpengined.toml(5) lists the keys of each kind under RELOADING.
enum class OnReload { restart, live, rank_start };

struct ConfigKey {
    std::string name;  // "section.key"
    OnReload on_reload;
};

// Every key of the file, in the order to_toml() prints them.
std::vector<ConfigKey> config_keys();

// A reload: takes from `next` (validated) every key a reload applies, and returns every key
// whose value differs between the two, the ones left for a restart included.
std::vector<ConfigKey> apply_reload(Config& running, const Config& next);

// The text of --help.
std::string usage_text();

}  // namespace dpengine
