"""Fault tolerance: a rank frozen with SIGSTOP (no heartbeats at all) is declared lost after
handshake.heartbeat_timeout, killed and restarted; SIGCONT afterwards changes nothing.

DP=2 on one node, heartbeat_timeout 1.5 s, under steady load. Checks: the head counts a
heartbeat-timeout for rank 1 (not "hung": a stopped process sends nothing), the supervisor
replaces the frozen process (a new pid; the old one is gone even though it was stopped), two
ranks are ready again within a bound, and the load has only completions and clear errors.
"""

import signal

import faults
from harness import Daemon, check, check_eq, check_log_clean, log, pid_alive, run_test, slow_factor, wait_until


def main() -> None:
    with Daemon(faults.local_config({"handshake": {"hang_timeout": 5.0}}), name="fault-stop") as d:
        d.wait_ready(30)
        before = d.ranks()
        with faults.Load(d.port, max_tokens=24) as load:
            check(load.wait_ok(20, 30), "the load is served before the fault")
            faults.signal_pid(before[1], signal.SIGSTOP)
            check(faults.wait_event(d.port, 1, "heartbeat-timeout", 1, 10),
                  "the head declares rank 1 lost (heartbeat-timeout)")
            check(wait_until(lambda: not pid_alive(before[1]), 5 * slow_factor()), "the frozen process was killed")
            try:
                faults.signal_pid(before[1], signal.SIGCONT)  # too late: it is gone
            except ProcessLookupError:
                log("  (SIGCONT: the process is already gone)")
            check(faults.wait_ready_ranks(d.port, 2, 15), "2 ranks ready again")
            after = d.ranks()
            check(after.get(1) not in (None, before[1]), "rank 1 runs as a new process", after)
            check(load.wait_ok(20, 30), "the load is served after the recovery")
        faults.check_accounting(load.report, "a frozen rank")
        events = faults.rank_events(d.port)
        log(f"  events: {events}")
        check(events.get((1, "hung"), 0) == 0, "a stopped rank is lost, not hung", events)
        check(events.get((1, "rejoined"), 0) >= 1, "rank 1 rejoined", events)
        check(d.wait_log(r"rank 1 .*went silent: no heartbeat .*\[heartbeat-timeout\]", 2), "the log gives the reason")
        check_eq(d.stop(), 0, "exit status after SIGTERM")
        check_log_clean(d)


if __name__ == "__main__":
    run_test(main, timeout=120)
