"""Fault tolerance: a rank busy on a long step is not taken for hung; one that takes no step
for handshake.hang_timeout while it has work is.

Heartbeats come from a thread of the rank, so they keep arriving during a step.
(1) engine.step_time_ms = 2500, longer than handshake.heartbeat_timeout (1.2 s) but shorter
    than hang_timeout (8 s): a few requests of 3 tokens complete correctly; no loss and no
    "hung" is counted; the rank processes are the same ones.
(2) engine.step_time_ms = 6000, longer than hang_timeout (2.5 s): with work queued the rank is
    declared hung (reason "hung", not heartbeat-timeout: its heartbeats kept coming), killed
    and restarted; its requests end with a clear error, none hangs.
"""

import faults
from harness import Daemon, check, check_eq, check_log_clean, log, run_test, slow_factor, wait_until


def scenario(step_ms: float, hang_timeout: float, name: str):
    config = {"data_parallel": {"size": 2}, "engine": {"step_time_ms": step_ms, "max_batch": 64},
              "handshake": {"heartbeat_interval": 0.3, "heartbeat_timeout": 1.2, "hang_timeout": hang_timeout,
                            "init_timeout": 20.0},
              "supervision": {"restart_backoff": 0.2}}
    return Daemon(config, name=name)


def main() -> None:
    log("--- (1) long steps: busy, not hung")
    with scenario(2500.0, 8.0, "fault-busy") as d:
        d.wait_ready(30)
        pids = d.ranks()
        load = faults.Load(d.port, clients=6, max_tokens=3, client_timeout=60).start()
        check(load.wait_ok(6, 60), "requests complete with 2.5 s steps")
        report = load.stop()
        faults.check_accounting(report, "long steps", min_ok=6)
        check_eq(report.counts()["error"], 0, "no request failed")
        events = faults.rank_events(d.port)
        check(not events, "no loss, hang or restart is counted", events)
        check_eq(d.ranks(), pids, "the rank processes are the same ones")
        check_eq(d.stop(), 0, "exit status after SIGTERM")
        check_log_clean(d)

    log("--- (2) a step longer than hang_timeout: hung")
    with scenario(6000.0, 2.5, "fault-hung") as d:
        d.wait_ready(30)
        pids = d.ranks()
        load = faults.Load(d.port, clients=4, max_tokens=2, client_timeout=60).start()
        any_event = lambda reason: any(r == reason for _, r in faults.rank_events(d.port))  # noqa: E731
        check(wait_until(lambda: any_event("hung"), 20 * slow_factor(), 0.1),
              "a rank with work and no step for 2.5 s is declared hung")
        report = load.stop()
        faults.check_accounting(report, "a hung rank", min_ok=0)
        check(report.counts()["error"] >= 1, "requests on the hung rank ended with a clear error", report.counts())
        events = faults.rank_events(d.port)
        log(f"  events: {events}")
        check(not any(reason == "heartbeat-timeout" for _, reason in events), "its heartbeats kept coming", events)
        check(d.wait_log(r"is hung: it sends heartbeats but took no step .*\[hung\]", 2), "the log gives the reason")
        check(wait_until(lambda: any_event("restarted"), 10 * slow_factor(), 0.1), "the hung rank was restarted")
        check(d.ranks() != pids, "a new process replaced the hung one", (pids, d.ranks()))
        check_eq(d.stop(), 0, "exit status after SIGTERM")
        check_log_clean(d)


if __name__ == "__main__":
    run_test(main, timeout=150)
