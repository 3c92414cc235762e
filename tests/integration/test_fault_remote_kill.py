"""Fault tolerance: a rank on a headless node killed with SIGKILL under steady load.

Head: rank 0; node B: rank 1 (heartbeat_timeout 1.5 s). Node B's supervisor starts a new rank 1
process; the head lets it in once the old one is declared lost (its heartbeats stopped: within
heartbeat_timeout), and 2 ranks serve again. Every request completes or gets a clear error;
none hangs or is answered twice; the head counts the loss and the rejoin for rank 1.
"""

import signal

import faults
from harness import check, check_eq, log, run_test


def main() -> None:
    with faults.two_node_cluster("fk") as (a, b, c, head, node_b):
        rank1 = node_b.ranks()[1]
        with faults.Load(head.port, ns=a, max_tokens=16) as load:
            check(load.wait_ok(20, 30), "the load is served before the kill")
            faults.signal_pid(rank1, signal.SIGKILL)
            check(faults.wait_losses(head.port, 1, 1, 10, ns=a), "the head declares the old rank 1 lost")
            check(faults.wait_ready_ranks(head.port, 2, 20, ns=a), "2 ranks ready again")
            check(node_b.ranks().get(1) not in (None, rank1), "rank 1 runs as a new process on node B", node_b.ranks())
            check(load.wait_ok(20, 30), "the load is served after the recovery")
        faults.check_accounting(load.report, "a remote rank's SIGKILL")
        events = faults.rank_events(head.port, ns=a)
        log(f"  head events: {events}")
        check(events.get((1, "rejoined"), 0) >= 1, "the head counts rank 1 as rejoined", events)
        check(node_b.wait_log(r"rank 1 \(pid \d+\) killed by signal KILL", 2), "node B logs the kill")
        check_eq(head.stop(), 0, "the head stops cleanly")
        check_eq(node_b.stop(), 0, "node B stops cleanly")
        c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=120)
