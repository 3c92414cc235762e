"""Fault tolerance: a rank killed again and again exhausts its restart budget and stays FAILED
while the other ranks keep serving.

DP=2, supervision.restart_budget = 2 within 60 s. Rank 1 is killed (SIGKILL) each time it is
back, three times. Checks: two restarts happen, the third exit is final (no new process;
state "failed" in /metrics; reason restart-budget-exhausted counted and logged); the load
meanwhile has only completions and clear errors, and keeps completing on rank 0; /health says
1 of 2 ready and names the missing rank.
"""

import signal
import time

import faults
from harness import Daemon, check, check_eq, check_log_clean, log, run_test, slow_factor, wait_until


def main() -> None:
    config = faults.local_config({"supervision": {"restart_budget": 2, "restart_window": 60.0}})
    with Daemon(config, name="fault-budget") as d:
        d.wait_ready(30)
        with faults.Load(d.port, max_tokens=16) as load:
            check(load.wait_ok(10, 30), "the load is served before the faults")
            seen = set()
            for attempt in range(3):
                pid = wait_until(lambda: d.ranks().get(1) if d.ranks().get(1) not in seen else None, 15 * slow_factor())
                check(pid, f"kill {attempt + 1}: rank 1 runs (a new process)")
                if attempt > 0:
                    check(faults.wait_ready_ranks(d.port, 2, 15), f"kill {attempt + 1}: rank 1 is ready again")
                seen.add(pid)
                faults.signal_pid(pid, signal.SIGKILL)
                check(faults.wait_losses(d.port, 1, attempt + 1, 5), f"kill {attempt + 1} counted")
            check(faults.wait_event(d.port, 1, "restart-budget-exhausted", 1, 10),
                  "rank 1's restart budget is exhausted (counted)")
            time.sleep(1.0)
            check(1 not in d.ranks(), "rank 1 is not started again", d.ranks())
            check_eq(faults.rank_states(d.port), {0: "ready", 1: "failed"}, "rank states in /metrics")
            h = faults.health(d.port)
            check(h and h.get("status") == "ok" and h.get("ready_ranks") == 1 and any("rank 1" in m for m in h.get("missing", [])),
                  "/health: ok, 1 ready, rank 1 named as missing", h)
            check(load.wait_ok(20, 30), "rank 0 keeps serving")
        faults.check_accounting(load.report, "repeated kills of rank 1")
        check(d.wait_log(r"rank 1 exhausted its restart budget", 5), "the log names the exhausted budget")
        log(f"  events: {faults.rank_events(d.port)}")
        check_eq(d.stop(), 0, "exit status after SIGTERM")
        check_log_clean(d)


if __name__ == "__main__":
    run_test(main, timeout=120)
