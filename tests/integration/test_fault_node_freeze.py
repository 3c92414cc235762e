"""Fault tolerance: every process of a headless node frozen (SIGSTOP to its whole namespace:
the node's daemon and its rank) for longer than handshake.heartbeat_timeout but less than the
grace period, then thawed (SIGCONT).

Head: rank 0; node B: rank 1; heartbeat_timeout 1.5 s, grace period 6 s; steady load. Checks:
the head declares rank 1 lost (heartbeat-timeout, not hung: nothing arrives from a stopped
process) and keeps serving with rank 0; after SIGCONT the same rank 1 process registers again
(rejoined) and 2 ranks serve; every request completes or gets a clear error, none hangs, none
is answered twice.
"""

import signal
import time

import faults
from harness import check, check_eq, log, run_test


def main() -> None:
    with faults.two_node_cluster("fz", grace=6.0) as (a, b, c, head, node_b):
        node_b_pid, rank1 = node_b.pid, node_b.ranks()[1]
        load = faults.Load(head.port, ns=a, max_tokens=16).start()
        try:
            check(load.wait_ok(20, 30), "the load is served before the freeze")
            frozen = faults.signal_namespace(b, signal.SIGSTOP)
            check(node_b_pid in frozen and rank1 in frozen, "node B's daemon and rank are frozen", frozen)
            stopped_at = time.monotonic()
            check(faults.wait_event(head.port, 1, "heartbeat-timeout", 1, 10, ns=a),
                  "the head declares rank 1 lost (heartbeat-timeout)")
            check(load.wait_ok(20, 30), "rank 0 keeps serving")
            time.sleep(max(0.0, stopped_at + 3.0 - time.monotonic()))
            faults.signal_namespace(b, signal.SIGCONT)
            check(faults.wait_ready_ranks(head.port, 2, 20, ns=a), "2 ranks ready again after SIGCONT")
            check(load.wait_ok(20, 30), "the load is served after the thaw")
        finally:
            faults.signal_namespace(b, signal.SIGCONT)
            report = load.stop()
        faults.check_accounting(report, "a frozen node")
        events = faults.rank_events(head.port, ns=a)
        log(f"  head events: {events}")
        check(events.get((1, "rejoined"), 0) >= 1 and not events.get((1, "hung")), "rejoined, never hung", events)
        check_eq((node_b.pid, node_b.ranks().get(1)), (node_b_pid, rank1), "node B's processes are the same ones")
        check_eq(head.stop(), 0, "the head stops cleanly")
        check_eq(node_b.stop(), 0, "node B stops cleanly")
        c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=120)
