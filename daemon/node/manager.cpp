#include "node/manager.hpp"

#include "bus/bus_service.hpp"
#include "bus/node_control.hpp"
#include "core/exit_codes.hpp"
#include "core/keys.hpp"
#include "core/log.hpp"
#include "core/runtime_dir.hpp"
#include "core/transport.hpp"
#include "head/http_server.hpp"
#include "head/node_registry.hpp"
#include "head/rank_link.hpp"
#include "node/head_probe.hpp"
#include "node/node_link.hpp"
#include "node/notify.hpp"
#include "node/restart_limit.hpp"
#include "node/supervisor.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <memory>

namespace dpengine {

namespace asio = boost::asio;
using Clock = std::chrono::steady_clock;

namespace {

std::chrono::milliseconds millis(double seconds) {
    return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// What this node knows of one of its own ranks, beyond what the head's rank link tracks.
struct LocalRank {
    uint32_t local_index = 0;
    bool running = false;
    // False once the head moved the rank to another node: it stops and is not restarted.
    bool assigned = true;
    uint64_t starts = 0;
    // An operator asked to stop (or restart) it: drain, then stop once idle or at the deadline.
    enum class Pending { none, stop, restart } pending = Pending::none;
    // Set while the rank drains before a stop: it fires at daemon.stop_timeout.
    std::unique_ptr<asio::steady_timer> stop_deadline;
    std::string last_exit;          // headless nodes: the last exit, for status
    RestartLimit restart_limit;     // unplanned restarts: supervision.restart_budget and back-off
    bool waiting_for_head = false;  // headless: exited for a lost head; starts when it answers
    std::string last_reason;        // headless: the reason code of last_exit, for status
    std::unique_ptr<asio::steady_timer> restart_timer;
};

class Node final : public NodeControl {
public:
    Node(const Config& config, std::vector<std::string> argv, RuntimeDir runtime_dir)
        : config_(config),
          argv_(std::move(argv)),
          runtime_dir_(std::move(runtime_dir)),
          signals_(io_, SIGTERM, SIGINT),
          reload_signal_(io_, SIGHUP),
          ready_timer_(io_),
          watchdog_timer_(io_),
          drain_timer_(io_),
          supervisor_(io_, [this](const ProcessExit& exit) { on_rank_exit(exit); }),
          head_probe_(io_, config_.data_parallel.address, config_.data_parallel.rpc_port),
          bus_(io_, *this) {
        // A headless node without a start rank waits for the head's assignment.
        for (uint32_t i = 0; !config_.assigned_by_head() && i < config_.size_local(); ++i) {
            local_[config_.first_local_rank() + i].local_index = i;
        }
    }

    int run() {
        const auto& dp = config_.data_parallel;
        endpoint_ = config_.has_remote_ranks() ? transport::tcp_endpoint(dp.address, dp.rpc_port)
                                               : transport::ipc_endpoint(runtime_dir_.path(), "rpc.sock");
        // However run() ends, no socket file is left behind.
        struct RemoveSocketFile {
            std::string path;
            ~RemoveSocketFile() {
                if (!path.empty()) ::unlink(path.c_str());
            }
        } socket_file{transport::ipc_path(endpoint_)};
        if (config_.node.role == Role::head) {
            if (auto started = start_head(); !started) {
                log::error("{}", started.error().message);
                return exit_code::failure;
            }
        } else {
            log::info("headless: {} rank(s) {}, connecting to the head at {}{}", config_.size_local(),
                      dp.start_rank ? "from rank " + std::to_string(*dp.start_rank)
                                    : std::string("where the head assigns them"),
                      endpoint_, config_.uses_curve() ? " (CURVE)" : " (plaintext: security.insecure)");
        }
        signals_.async_wait([this](const boost::system::error_code& ec, int sig) {
            if (!ec) stop(sig);
        });
        wait_for_reload_signal();
        auto server_key = rank_server_key();
        if (!server_key) {
            log::error("{}", server_key.error().message);
            return exit_code::failure;
        }
        server_key_ = std::move(server_key).value();
        for (auto& [rank, local] : local_) {
            if (auto spawned = spawn(rank); !spawned) {
                log::error("{}", spawned.error().message);
                return exit_code::failure;
            }
        }
        if (config_.node.role == Role::headless) {
            if (auto linked = start_node_link(); !linked) {
                log::error("{}", linked.error().message);
                return exit_code::failure;
            }
        }
        bus_.start();
        start_watchdog();
        ready_timer_.expires_after(millis(config_.handshake.ready_timeout));
        ready_timer_.async_wait([this](const boost::system::error_code& ec) {
            if (!ec) ready_deadline_passed();
        });
        update_status();
        io_.run();
        log::info("stopped");
        return exit_code::ok;
    }

    // ---- NodeControl ----

    std::string role() const override { return link_ ? "head" : "headless"; }
    std::string node_name() const override { return config_.node.name; }
    uint32_t dp_size() const override { return config_.dp_size(); }
    uint64_t epoch() const override { return link_ ? link_->epoch() : node_link_ ? node_link_->epoch() : 0; }
    // A headless node: its own ranks that the head reports ready.
    uint32_t ready_ranks() const override {
        if (link_) return link_->ready_count();
        auto own = ranks();
        return static_cast<uint32_t>(
            std::count_if(own.begin(), own.end(), [](const RankInfo& r) { return r.state == RankState::ready; }));
    }

    std::vector<RankInfo> ranks() const override {
        std::vector<RankInfo> out;
        if (link_) {
            for (uint32_t rank = 0; rank < link_->size(); ++rank) out.push_back(*rank_info(rank));
        } else {
            for (const auto& entry : local_) out.push_back(*rank_info(entry.first));
        }
        return out;
    }

    // One rank as ranks() has it, without building the others' (the bus reads one at a time).
    std::optional<RankInfo> rank_info(uint32_t rank) const override {
        const auto local_entry = local_.find(rank);
        const bool is_local = local_entry != local_.end();
        std::optional<RankInfo> found;
        if (link_) {
            found = link_->rank_info(rank);
        } else if (is_local) {
            // A headless node knows its processes; their protocol state lives on the head, which
            // reports it over the node link.
            const auto& local = local_entry->second;
            RankInfo& info = found.emplace();
            info.rank = rank;
            info.node = config_.node.name;
            info.state = local.running ? RankState::starting : RankState::stopped;
            if (local.running && node_link_) {
                if (auto reported = rank_state_from_string(node_link_->rank_state(rank))) info.state = *reported;
                if (auto activity = node_link_->rank_activity(rank)) {
                    info.activity_known = true;
                    info.group_kind = activity->group_kind == "none" ? "" : activity->group_kind;
                    info.group_epoch = activity->group_epoch;
                    info.wave = activity->wave;
                    info.memory_used = activity->memory_used;
                    info.steps_per_second = activity->steps_per_second;
                    info.dummy_step_share = activity->dummy_step_share;
                    info.device = activity->device;
                    info.in_flight = activity->in_flight;
                    info.waiting = activity->waiting;
                    info.served = activity->served;
                }
            }
            info.last_error = local.last_exit;
            info.reason = local.last_reason;
        }
        if (!found) return std::nullopt;
        RankInfo& info = *found;
        if (is_local) info.restarts = local_entry->second.starts > 0 ? local_entry->second.starts - 1 : 0;
        if (pid_t pid = supervisor_.pid_of(rank)) info.pid = static_cast<uint32_t>(pid);
        // Ranks of headless nodes: their process as the node last reported it.
        if (registry_ && !is_local) {
            if (auto process = registry_->rank_process(rank)) {
                info.pid = process->pid;
                info.restarts = process->restarts;
            }
        }
        return found;
    }

    std::vector<NodeInfo> nodes() const override {
        if (registry_) return registry_->nodes();
        std::vector<NodeInfo> out;
        if (!node_link_) return out;
        NodeInfo self;
        self.name = config_.node.name;
        self.role = "headless";
        self.state = node_link_->connected() ? "connected" : "disconnected";
        self.wanted = config_.size_local();
        if (auto block = node_link_->block()) {
            self.start_rank = block->first;
            self.count = block->second;
        }
        out.push_back(self);
        out.push_back(node_link_->head());
        return out;
    }

    Status assign_ranks(const std::string& node, uint32_t start, uint32_t count) override {
        if (!registry_) return Error{"ranks are assigned on the head; run dpctl assign there", "not-local"};
        return registry_->assign(node, start, count);
    }

    Status start_rank(uint32_t rank) override {
        auto local = local_rank(rank);
        if (!local) return local.error();
        if ((*local)->running) return Error{"rank " + std::to_string(rank) + " is already running", "bad-state"};
        (*local)->pending = LocalRank::Pending::none;
        (*local)->waiting_for_head = false;
        (*local)->restart_limit.reset();  // an operator's start is a fresh budget
        if ((*local)->restart_timer) (*local)->restart_timer->cancel();
        return spawn(rank);
    }

    Status stop_rank(uint32_t rank) override { return begin_stop(rank, LocalRank::Pending::stop); }
    Status restart_rank(uint32_t rank) override { return begin_stop(rank, LocalRank::Pending::restart); }

    Status drain_rank(uint32_t rank) override {
        if (auto checked = head_rank(rank); !checked) return checked;
        return link_->drain(rank, /*until_undrain=*/true);
    }

    Status undrain_rank(uint32_t rank) override {
        if (auto checked = head_rank(rank); !checked) return checked;
        return link_->undrain(rank);
    }

    Status stop_node() override {
        for (auto& [rank, local] : local_) {
            if (local.running && local.pending == LocalRank::Pending::none)
                (void)begin_stop(rank, LocalRank::Pending::stop);
        }
        return Ok{};
    }

    Status start_node() override {
        for (auto& [rank, local] : local_) {
            if (local.running) continue;
            local.pending = LocalRank::Pending::none;
            if (auto spawned = spawn(rank); !spawned) return spawned;
        }
        return Ok{};
    }

    // Applies what can change while running; anything else is named as needing a restart. A
    // configuration that does not parse or validate is refused and the running one kept.
    Status reload() override {
        std::vector<const char*> args;
        for (const auto& a : argv_) args.push_back(a.c_str());
        CommandLine cmdline;
        cmdline.reload = true;
        auto fresh = parse_command_line(static_cast<int>(args.size()), args.data(), cmdline);
        if (!fresh) {
            log::error("reload refused, keeping the running configuration: {}", fresh.error().message);
            return Error{"reload refused: " + fresh.error().message, "failed"};
        }
        for (const auto& w : cmdline.warnings) log::warning("{}", w);
        Config previous = config_;
        auto changed = apply_reload(config_, *fresh);
        // The front-end loads its key file and certificate, or keeps the ones it has.
        if (http_) {
            if (auto front_reloaded = http_->config_changed(); !front_reloaded) {
                config_ = previous;
                log::error("reload refused, keeping the running configuration: {}", front_reloaded.error().message);
                return Error{"reload refused: " + front_reloaded.error().message, "failed"};
            }
        }
        if (link_) {
            if (auto keys_reloaded = link_->reload_authorized_keys(); !keys_reloaded) {
                config_ = previous;
                if (http_) (void)http_->config_changed();  // back to the running files, as far as they still load
                log::error("reload refused, keeping the running configuration: {}", keys_reloaded.error().message);
                return Error{"reload refused: " + keys_reloaded.error().message, "failed"};
            }
        }
        log_reload(changed);
        return Ok{};
    }

private:
    // Names what of a reload does not apply at once: keys that reach ranks as they start,
    // and keys that wait for the daemon's restart.
    static void log_reload(const std::vector<ConfigKey>& changed) {
        auto names = [&](OnReload kind) {
            std::string out;
            for (const auto& key : changed) {
                if (key.on_reload == kind) out += (out.empty() ? "" : ", ") + key.name;
            }
            return out;
        };
        std::string at_rank_start = names(OnReload::rank_start), after_restart = names(OnReload::restart);
        std::string text = "configuration reloaded";
        if (!at_rank_start.empty()) {
            text += "; changes to " + at_rank_start + " reach each rank when it next starts ('dpctl restart RANK')";
        }
        if (!after_restart.empty()) text += "; changes to " + after_restart + " take effect after a restart";
        log::write(after_restart.empty() ? log::Level::notice : log::Level::warning, text);
    }

    void wait_for_reload_signal() {
        reload_signal_.async_wait([this](const boost::system::error_code& ec, int) {
            if (ec || stopping_) return;
            log::info("received HUP; reloading the configuration");
            (void)reload();
            wait_for_reload_signal();
        });
    }

    Status head_rank(uint32_t rank) const {
        if (!link_) return Error{"drain and undrain are done on the head, which routes requests", "not-local"};
        if (rank >= config_.dp_size()) {
            return Error{
                "rank " + std::to_string(rank) + " does not exist: the DP size is " + std::to_string(config_.dp_size()),
                "invalid-rank"};
        }
        return Ok{};
    }

    Result<LocalRank*> local_rank(uint32_t rank) {
        auto it = local_.find(rank);
        if (it != local_.end()) return &it->second;
        if (config_.dp_size() && rank >= config_.dp_size()) {
            return Error{
                "rank " + std::to_string(rank) + " does not exist: the DP size is " + std::to_string(config_.dp_size()),
                "invalid-rank"};
        }
        // The ranks it runs now: the head may have assigned or moved them.
        std::string runs;
        for (const auto& [r, l] : local_) {
            if (l.assigned) runs += (runs.empty() ? "" : ", ") + std::to_string(r);
        }
        return Error{"rank " + std::to_string(rank) + " does not run on this node (" +
                         (runs.empty() ? std::string("it runs none") : "it runs ranks " + runs) +
                         "); use dpctl on the node that runs it",
                     "not-local"};
    }

    Status begin_stop(uint32_t rank, LocalRank::Pending what) {
        auto local = local_rank(rank);
        if (!local) return local.error();
        LocalRank& r = **local;
        if (!r.running) {
            if (what == LocalRank::Pending::restart) return spawn(rank);
            return Error{"rank " + std::to_string(rank) + " is not running", "bad-state"};
        }
        r.pending = what;
        // A rank that serves gets no new requests from now on; it stops once idle.
        if (link_) (void)link_->drain(rank);
        log::info("{} rank {}: draining first", what == LocalRank::Pending::stop ? "stopping" : "restarting", rank);
        if (!link_ || link_->in_flight_on(rank) == 0) {
            end_rank_drain(rank);
            return Ok{};
        }
        // Otherwise the link's rank_idle event ends the drain (on_rank_idle), or this does.
        r.stop_deadline = std::make_unique<asio::steady_timer>(io_, millis(config_.daemon.stop_timeout));
        r.stop_deadline->async_wait([this, rank](const boost::system::error_code& ec) {
            if (!ec) end_rank_drain(rank);
        });
        return Ok{};
    }

    // The drain before a stop is over, idle or at daemon.stop_timeout: the rank exits now, and
    // what it still has in flight fails.
    void end_rank_drain(uint32_t rank) {
        local_.at(rank).stop_deadline.reset();
        if (link_) link_->stop(rank);
        supervisor_.signal(rank, SIGTERM);
    }

    // The link's event (posted: it comes from inside the link's bookkeeping): the last request
    // in flight on `rank` ended. A stop waiting for the rank goes on, and so does the daemon's
    // own stop once nothing is in flight anywhere.
    void on_rank_idle(uint32_t rank) {
        if (link_->in_flight_on(rank) > 0) return;  // it took a request since
        if (auto it = local_.find(rank); it != local_.end() && it->second.stop_deadline) end_rank_drain(rank);
        if (stopping_ && link_->in_flight() == 0) end_drain();
    }

    // ---- the cluster view ----

    // Headless: register with the head and run the ranks it assigns.
    Status start_node_link() {
        NodeLink::Hooks hooks;
        hooks.assigned = [this](const wire::NodeConfig& block) { apply_assignment(block.start_rank, block.count); };
        hooks.status = [this] { return local_status(); };
        hooks.changed = [this] { bus_.nodes_changed(); };
        node_link_ = std::make_unique<NodeLink>(io_, config_, std::move(hooks));
        return node_link_->connect(endpoint_);
    }

    wire::NodeStatus local_status() const {
        wire::NodeStatus status;
        for (const auto& [rank, local] : local_) {
            if (!local.assigned) continue;
            wire::NodeRankStatus r;
            r.rank = rank;
            r.state = local.running ? "running" : "stopped";
            r.pid = static_cast<uint32_t>(supervisor_.pid_of(rank));
            r.restarts = local.starts > 0 ? local.starts - 1 : 0;
            r.last_error = local.last_exit;
            status.ranks.push_back(std::move(r));
        }
        return status;
    }

    // Run exactly ranks start .. start + count - 1 from now on (a headless node: as the head
    // assigns; the head: after ranks moved to it). Ranks that leave are stopped (their requests
    // were drained by the head) and not restarted; new ones start.
    void apply_assignment(uint32_t start, uint32_t count) {
        if (stopping_) return;
        auto in_block = [&](uint32_t rank) { return rank >= start && rank < start + count; };
        std::vector<uint32_t> gone;
        for (auto& [rank, local] : local_) {
            // Ranks no longer assigned here are stopping already (released by the head).
            if (in_block(rank) || !local.assigned) continue;
            log::info("rank {} moves off this node; stopping it", rank);
            local.assigned = false;
            if (local.restart_timer) local.restart_timer->cancel();
            if (local.running) {
                local.pending = LocalRank::Pending::stop;
                supervisor_.signal(rank, SIGTERM);
            } else {
                gone.push_back(rank);
            }
        }
        for (uint32_t rank : gone) local_.erase(rank);
        for (uint32_t rank = start; rank < start + count; ++rank) {
            auto [it, is_new] = local_.try_emplace(rank);
            LocalRank& local = it->second;
            local.local_index = rank - start;
            // A rank this node already runs keeps its state (an operator may have stopped it,
            // or it may wait for a restart).
            if (!is_new && local.assigned) continue;
            local.assigned = true;
            if (!is_new) {  // it was stopping (moved away): it comes back once it has exited
                local.pending = LocalRank::Pending::restart;
                continue;
            }
            if (auto spawned = spawn(rank); !spawned) log::error("starting rank {}: {}", rank, spawned.error().message);
        }
        if (node_link_) node_link_->report_soon();
    }

    // Head: one of its own ranks moved to another node. The registry drained it already.
    void release_local_rank(uint32_t rank) {
        auto it = local_.find(rank);
        if (it == local_.end()) return;
        LocalRank& local = it->second;
        local.assigned = false;
        if (local.restart_timer) local.restart_timer->cancel();
        link_->stop(rank);
        if (local.running) {
            local.pending = LocalRank::Pending::stop;
            supervisor_.signal(rank, SIGTERM);
        } else {
            local_.erase(it);
        }
        log::info("rank {} moved to another node; its process here stops", rank);
    }

    Status start_head() {
        RankLink::Events events;
        events.ready_count_changed = [this] { update_status(); };
        events.rank_changed = [this](uint32_t rank) { bus_.rank_changed(rank); };
        events.deadline_missed = [this](uint32_t rank) { supervisor_.signal(rank, SIGKILL); };
        events.rank_idle = [this](uint32_t rank) { asio::post(io_, [this, rank] { on_rank_idle(rank); }); };
        link_ = std::make_unique<RankLink>(io_, config_, std::move(events));
        if (auto bound = link_->bind(endpoint_); !bound) return bound;
        NodeRegistry::Hooks node_hooks;
        node_hooks.release_local = [this](uint32_t rank) { release_local_rank(rank); };
        node_hooks.assign_local = [this](uint32_t start, uint32_t count) { apply_assignment(start, count); };
        node_hooks.nodes_changed = [this] { bus_.nodes_changed(); };
        registry_ = std::make_unique<NodeRegistry>(io_, config_, *link_, std::move(node_hooks));
        link_->set_node_handler(
            [this](const std::string& routing_id, const wire::Envelope& envelope, const std::string& key_node,
                   const std::string& peer) { registry_->on_message(routing_id, envelope, key_node, peer); });
        http_ = std::make_unique<HttpServer>(io_, config_, *link_, [this] { return ranks(); });
        if (auto listening = http_->listen(); !listening) return listening;
        log::info("head: DP size {}, {} local rank(s), ranks connect to {}, HTTP on {}:{}", config_.dp_size(),
                  config_.size_local(), endpoint_, config_.frontend.host, config_.frontend.port);
        return Ok{};
    }

    // The public key a rank checks the head's with (CURVE; "" without): loaded once, at start,
    // as security.key changes only with a restart.
    Result<std::string> rank_server_key() const {
        if (!config_.uses_curve()) return std::string();
        if (config_.node.role == Role::headless) return config_.security.head_public_key;
        auto own = keys::load_secret(config_.security.key);
        if (!own) return Error{"security.key: " + own.error().message};
        return own->public_z85;
    }

    // The rank's command line, from the configuration as it is now: a reload's values of
    // handshake.connect_timeout and supervision.head_grace_period reach the ranks started after it.
    std::vector<std::string> rank_argv(uint32_t rank, uint32_t local_index) const {
        const bool headless = config_.node.role == Role::headless;
        std::vector<std::string> args = {
            find_engine_program(config_.daemon.engine_program),
            "--rank",
            std::to_string(rank),
            "--local-rank",
            std::to_string(local_index),
            "--connect",
            endpoint_,
            "--node",
            config_.node.name,
            // A head's own ranks must reach it at once; a headless node waits for its head.
            "--connect-timeout",
            headless ? "0" : std::to_string(config_.handshake.connect_timeout),
            "--max-message-bytes",
            std::to_string(config_.daemon.max_message_bytes),
        };
        // A headless node states the DP size it was given, so a mismatch with the head is
        // refused rather than silently overridden.
        if (headless && config_.dp_size()) args.insert(args.end(), {"--dp-size", std::to_string(config_.dp_size())});
        // Only a headless node's ranks outlive their head; the head's own stop with it.
        if (headless)
            args.insert(args.end(), {"--head-grace-period", fmt::format("{}", config_.supervision.head_grace_period)});
        if (config_.uses_curve()) args.insert(args.end(), {"--key", config_.security.key, "--server-key", server_key_});
        return args;
    }

    Status spawn(uint32_t rank) {
        LocalRank& local = local_.at(rank);
        auto pid = supervisor_.spawn(rank, rank_argv(rank, local.local_index));
        if (!pid) return pid.error();
        local.running = true;
        ++local.starts;
        log::info("rank {} started (pid {})", rank, *pid);
        if (link_) link_->rank_spawned(rank);
        bus_.rank_changed(rank);
        if (node_link_) node_link_->report_soon();
        return Ok{};
    }

    void on_rank_exit(const ProcessExit& exit) {
        std::string cause = exit.describe();
        LocalRank& local = local_.at(exit.rank);
        local.running = false;
        local.last_exit = cause;
        local.last_reason = ReasonCode("rank-exited");
        local.stop_deadline.reset();
        auto pending = std::exchange(local.pending, LocalRank::Pending::none);
        if (stopping_ || pending != LocalRank::Pending::none) {
            log::info("rank {} (pid {}) stopped: {}", exit.rank, exit.pid, cause);
        } else {
            // On a head the rank link reports the loss with its consequences; this adds the pid.
            log::write(link_ ? log::Level::info : log::Level::warning,
                       fmt::format("rank {} (pid {}) {}", exit.rank, exit.pid, cause));
        }
        // A rank that moved to another node may be registered from there already: its old
        // process's exit says nothing about it.
        if (link_ && local.assigned) link_->rank_exited(exit.rank, static_cast<uint32_t>(exit.pid), cause);
        bus_.rank_changed(exit.rank);
        if (node_link_) node_link_->report_soon();
        if (!local.assigned) {  // moved to another node: gone from here
            local_.erase(exit.rank);
            return;
        }
        if (stopping_ || pending == LocalRank::Pending::stop) return;
        if (pending == LocalRank::Pending::restart) {
            if (auto spawned = spawn(exit.rank); !spawned)
                log::error("restarting rank {}: {}", exit.rank, spawned.error().message);
            return;
        }
        schedule_restart(exit);
    }

    // An unplanned exit: restart after a back-off that doubles with each recent restart, until
    // the budget is spent. Exits that say "running it again fails the same way" are final.
    void schedule_restart(const ProcessExit& exit) {
        LocalRank& local = local_.at(exit.rank);
        if (exit.exit_status == exit_code::config || exit.exit_status == exit_code::refused) {
            log::error("rank {} will not be restarted: it {} ({}); fix the cause, then 'dpctl start {}'", exit.rank,
                       exit.describe(),
                       exit.exit_status == exit_code::config ? "configuration error" : "refused by the head",
                       exit.rank);
            return;
        }
        if (exit.exit_status == exit_code::unreachable && config_.node.role == Role::headless) {
            wait_for_head(exit.rank);
            return;
        }
        const auto& sup = config_.supervision;
        auto delay = local.restart_limit.admit(sup, Clock::now());
        if (!delay) {
            std::string reason = "exhausted its restart budget (" + std::to_string(sup.restart_budget) +
                " restarts in " + std::to_string(static_cast<int>(sup.restart_window)) +
                " s, supervision.restart_budget); 'dpctl start " + std::to_string(exit.rank) + "' tries again";
            log::error("rank {} {}", exit.rank, reason);
            local.last_exit = reason;
            local.last_reason = ReasonCode("restart-budget-exhausted");
            if (link_) link_->rank_failed(exit.rank, reason, "restart-budget-exhausted");
            bus_.rank_changed(exit.rank);
            return;
        }
        log::info("restarting rank {} in {:.1f} s (restart {} of {} within {} s)", exit.rank,
                  std::chrono::duration<double>(*delay).count(), local.restart_limit.counted(), sup.restart_budget,
                  static_cast<int>(sup.restart_window));
        if (!local.restart_timer) local.restart_timer = std::make_unique<asio::steady_timer>(io_);
        local.restart_timer->expires_after(*delay);
        local.restart_timer->async_wait([this, rank = exit.rank](const boost::system::error_code& ec) {
            if (ec || stopping_) return;
            auto it = local_.find(rank);
            if (it == local_.end() || !it->second.assigned) return;
            LocalRank& l = it->second;
            if (l.running || l.pending != LocalRank::Pending::none) return;
            if (auto spawned = spawn(rank); !spawned)
                log::error("restarting rank {}: {}", rank, spawned.error().message);
        });
    }

    // The rank gave up on a silent head (supervision.head_grace_period). Restarting it at once
    // would only wait again with a fresh engine; it starts when the head's port answers, and
    // this costs nothing from its restart budget: the rank did not fail.
    void wait_for_head(uint32_t rank) {
        LocalRank& local = local_.at(rank);
        local.waiting_for_head = true;
        local.last_reason = ReasonCode("head-grace-expired");
        local.last_exit =
            "stopped after losing the head for longer than supervision.head_grace_period "
            "[head-grace-expired]; starts again when the head answers";
        log::warning("rank {} {}", rank, local.last_exit);
        head_probe_.wait([this] {
            if (stopping_) return;
            for (auto& [r, l] : local_) {
                if (!std::exchange(l.waiting_for_head, false) || l.running || l.pending != LocalRank::Pending::none)
                    continue;
                log::info("restarting rank {}: the head is back [head-back]", r);
                if (auto spawned = spawn(r); !spawned) log::error("restarting rank {}: {}", r, spawned.error().message);
            }
        });
    }

    // STATUS= always tells how many ranks are ready, and how many of them run here. READY=1
    // goes out once start-up is done on this node (start_complete()): the service manager's
    // start job, and units ordered after this one, do not wait for other machines.
    void update_status() {
        if (stopping_) return;
        if (!link_) {
            notify::status(std::to_string(supervisor_.running()) + " local rank(s) running");
            if (!ready_sent_) {
                ready_sent_ = true;
                notify::ready();
            }
            return;
        }
        uint32_t ready = link_->ready_count(), size = link_->size();
        auto [local_ready, local_count] = local_readiness();
        std::string text = std::to_string(ready) + "/" + std::to_string(size) + " ranks ready";
        if (local_count == 0) {
            text += " (all on other nodes)";
        } else if (local_count < size) {
            text += " (" + std::to_string(local_ready) + "/" + std::to_string(local_count) + " on this node, " +
                std::to_string(ready - local_ready) + "/" + std::to_string(size - local_count) + " on other nodes)";
        }
        if (ready_sent_ && !link_->has_quorum()) {
            text += ", fewer than data_parallel.min_ranks (" + std::to_string(config_.data_parallel.min_ranks) +
                "); refusing requests";
        }
        notify::status(text);
        if (ready == size && !all_ready_logged_) {  // start-up is over: the deadline has nothing left to report
            all_ready_logged_ = true;
            ready_timer_.cancel();
            log::notice("all {} rank(s) ready; serving on {}:{}", size, config_.frontend.host, config_.frontend.port);
        }
        if (ready_sent_ || !start_complete(ready, local_ready, local_count)) return;
        ready_sent_ = true;
        if (ready < size) {
            log::notice("{}/{} rank(s) ready, {} of them on this node; serving on {}:{} while the others join", ready,
                        size, local_ready, config_.frontend.host, config_.frontend.port);
        }
        notify::ready();
    }

    // Start-up is complete on the head once every rank this node runs is ready and so are
    // data_parallel.min_ranks ranks in all: with the default (1) only the local ranks count.
    // A head without ranks of its own (-dpl 0) has nothing to start: it is ready once its
    // front-end listens, unless min_ranks asks for 2 or more ranks.
    bool start_complete(uint32_t ready, uint32_t local_ready, uint32_t local_count) const {
        const uint32_t min_ranks = config_.data_parallel.min_ranks;
        if (local_count == 0 && min_ranks <= 1) return true;
        return local_ready == local_count && ready >= min_ranks;
    }

    // How many of the ranks this node runs are ready, of how many.
    std::pair<uint32_t, uint32_t> local_readiness() const {
        uint32_t ready = 0, count = 0;
        for (const auto& [rank, local] : local_) {
            if (!local.assigned) continue;
            ++count;
            if (link_->state_of(rank) == RankState::ready) ++ready;
        }
        return {ready, count};
    }

    // Start-up did not complete in time: say which ranks are missing, and serve with the rest,
    // or, with fewer than data_parallel.min_ranks, refuse requests until enough are READY.
    // READY=1 may have gone out already (this node's ranks were ready): then this only reports.
    void ready_deadline_passed() {
        if (!link_ || link_->ready_count() == link_->size()) return;
        std::string missing;
        for (const auto& m : link_->missing_ranks()) missing += (missing.empty() ? "" : ", ") + m;
        if (!link_->has_quorum()) {
            log::error(
                "only {} of {} ranks are ready after {} s (handshake.ready_timeout), fewer than "
                "data_parallel.min_ranks ({}); refusing requests until enough are; missing: {} [below-min-ranks]",
                link_->ready_count(), link_->size(), config_.handshake.ready_timeout, config_.data_parallel.min_ranks,
                missing);
        } else {
            log::warning(
                "not every rank is ready after {} s (handshake.ready_timeout); missing: {}; serving with {} of {}",
                config_.handshake.ready_timeout, missing, link_->ready_count(), link_->size());
        }
        if (!std::exchange(ready_sent_, true)) notify::ready();
        update_status();
    }

    void start_watchdog() {
        auto interval = notify::watchdog_interval();
        if (!interval) return;
        watchdog_timer_.expires_after(*interval / 2);
        watchdog_timer_.async_wait([this](const boost::system::error_code& ec) {
            if (ec) return;
            notify::watchdog();
            start_watchdog();
        });
    }

    void stop(int sig) {
        if (stopping_) return;
        stopping_ = true;
        log::info("received {}; stopping", sigabbrev_np(sig) ? sigabbrev_np(sig) : "signal");
        notify::stopping();
        ready_timer_.cancel();
        head_probe_.cancel();
        for (auto& [rank, local] : local_) {
            if (local.restart_timer) local.restart_timer->cancel();
            local.stop_deadline.reset();  // the daemon's drain below covers every rank
        }
        if (http_) http_->stop_accepting();
        // Before the ranks stop: the head then knows their end is no failure.
        if (node_link_) node_link_->leave();
        // A second signal means "now".
        signals_.async_wait([this](const boost::system::error_code& ec, int) {
            if (!ec) end_drain();
        });
        if (!link_ || link_->in_flight() == 0) {
            end_drain();
            return;
        }
        // Otherwise the rank_idle event of the last request ends the drain (on_rank_idle), or this does.
        drain_timer_.expires_after(millis(config_.daemon.stop_timeout));
        drain_timer_.async_wait([this](const boost::system::error_code& ec) {
            if (!ec) end_drain();
        });
    }

    // The requests in flight at the stop are done, daemon.stop_timeout passed, or a second
    // signal came: what is still in flight fails, and the ranks stop.
    void end_drain() {
        if (std::exchange(drain_ended_, true)) return;
        drain_timer_.cancel();
        if (link_) {
            if (link_->in_flight() > 0) {
                log::warning("{} request(s) still in flight after {} s (daemon.stop_timeout); failing them",
                             link_->in_flight(), config_.daemon.stop_timeout);
            }
            link_->shutdown();
            if (http_) http_->stop_accepting();
        }
        supervisor_.stop_all(std::chrono::seconds(5), [this] {
            watchdog_timer_.cancel();
            signals_.cancel();
            reload_signal_.cancel();
            // Let the last responses reach their clients before the loop ends.
            drain_timer_.expires_after(std::chrono::milliseconds(100));
            drain_timer_.async_wait([this](const boost::system::error_code&) { io_.stop(); });
        });
    }

    Config config_;  // every part holds a reference to this one: reload() updates it in place
    const std::vector<std::string> argv_;
    RuntimeDir runtime_dir_;
    asio::io_context io_;
    asio::signal_set signals_, reload_signal_;
    asio::steady_timer ready_timer_, watchdog_timer_, drain_timer_;
    Supervisor supervisor_;
    HeadProbe head_probe_;
    std::unique_ptr<RankLink> link_;
    std::unique_ptr<NodeRegistry> registry_;  // head: the cluster's nodes
    std::unique_ptr<NodeLink> node_link_;     // headless: the link to the head
    std::unique_ptr<HttpServer> http_;
    BusService bus_;
    std::map<uint32_t, LocalRank> local_;
    std::string server_key_;  // see rank_server_key()
    std::string endpoint_;
    bool ready_sent_ = false;
    bool all_ready_logged_ = false;
    bool stopping_ = false;
    bool drain_ended_ = false;  // end_drain() ran
};

}  // namespace

int run_node(const Config& config, std::vector<std::string> argv) {
    log::set_identity("dpengined");
    ::signal(SIGPIPE, SIG_IGN);
    auto runtime_dir = RuntimeDir::open(config.daemon.runtime_directory);
    if (!runtime_dir) {
        log::error("{}", runtime_dir.error().message);
        return exit_code::failure;
    }
    Node node(config, std::move(argv), std::move(runtime_dir).value());
    return node.run();
}

}  // namespace dpengine
