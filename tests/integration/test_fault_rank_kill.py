"""Fault tolerance: a local rank killed with SIGKILL under steady load is restarted.

DP=2 on one node, ~50 concurrent clients (fewer under the sanitizers). Rank 1 gets SIGKILL.
Checks: every request completes or ends with a clear error, none hangs, none is answered twice
(faults.Load accounting); the supervisor starts a new rank 1 process (a new pid) and /health is
back to 2 ready ranks within a bound; /metrics counts the loss and the recovery for rank 1
(dpengine_rank_events_total: one loss, reason rank-exited or connection-lost, whichever
the head saw first; restarted; rejoined); the load succeeds again
afterwards.
"""

import signal

import faults
from harness import Daemon, check, check_eq, check_log_clean, log, run_test, slow_factor, wait_until

RECOVERY_BOUND = 15.0  # seconds from the kill to 2 ready ranks again (restart_backoff 0.2 s)


def main() -> None:
    with Daemon(faults.local_config(), name="fault-kill") as d:
        d.wait_ready(30)
        before = d.ranks()
        with faults.Load(d.port, max_tokens=24) as load:
            check(load.wait_ok(20, 30), "the load is served before the fault")
            faults.signal_pid(before[1], signal.SIGKILL)
            check(faults.wait_losses(d.port, 1, 1, 5), "the head counts rank 1's loss")
            check(faults.wait_ready_ranks(d.port, 2, RECOVERY_BOUND),
                  f"2 ranks ready again within {RECOVERY_BOUND * slow_factor():.0f} s")
            after = wait_until(lambda: d.ranks() if len(d.ranks()) == 2 else None, 5)
            check(after and after[1] != before[1] and after[0] == before[0],
                  "rank 1 runs as a new process; rank 0 is untouched", (before, after))
            check(load.wait_ok(20, 30), "the load is served after the recovery")
        faults.check_accounting(load.report, "a local rank's SIGKILL")
        events = faults.rank_events(d.port)
        log(f"  events: {events}")
        check(faults.losses(d.port, 1) == 1, "one loss of rank 1 (rank-exited or connection-lost)", events)
        for reason in ("restarted", "rejoined"):
            check(events.get((1, reason), 0) >= 1, f"dpengine_rank_events_total{{rank=1,reason={reason}}} >= 1", events)
        check(not any(r == 0 for r, _ in events), "rank 0 has no events", events)
        check(d.wait_log(r"rank 1 \(node '[^']*'\) is back after its loss \[rejoined\]", 5), "the log says rank 1 rejoined")
        check_eq(d.stop(), 0, "exit status after SIGTERM")
        check_log_clean(d)
        check(not d.tagged_processes(), "no process of the daemon remains")


if __name__ == "__main__":
    run_test(main, timeout=120)
