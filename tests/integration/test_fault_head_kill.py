"""Fault tolerance: the head's daemon is killed (SIGKILL) and started again, once within node
B's grace period and once after it.

Head: rank 0; node B: rank 1; node B's grace period 4 s. Load runs before and after each
outage (requests whose connection was open when the head died are "cut": no server is left to
answer them; everything else completes or gets a clear error, none hangs, none is answered
twice).
(1) The head is back within 1 s: node B's rank 1 registers with the new head as the same
    process; 2 ranks serve.
(2) The head is back after 7 s: rank 1 has stopped at the end of the grace period (exit 75,
    [head-grace-expired]); node B starts it when the head's port answers; 2 ranks serve.
Node B's daemon is the same process throughout.
"""

import re
import time

import faults
from harness import check, check_eq, log, pid_alive, run_test, slow_factor, wait_until

GRACE = 4.0


def main() -> None:
    with faults.two_node_cluster("fh", grace=GRACE) as (a, b, c, head, node_b):
        node_b_pid, rank1 = node_b.pid, node_b.ranks()[1]
        for round_, away in enumerate((0.5, GRACE + 3.0), 1):
            log(f"--- round {round_}: the head is away for {away} s")
            load = faults.Load(head.port, ns=a, max_tokens=16).start()
            try:
                check(load.wait_ok(20, 30), "the load is served before the kill")
                mark = len(node_b.log_text())
                load.outage()
                head.kill()
                check(wait_until(lambda: not head.tagged_processes(), 10 * slow_factor()),
                      "the head and its ranks are gone")
                time.sleep(away)
                # The same HTTP port: the clients keep their address.
                head = faults.two_nodes(c, a, b, grace=GRACE, head_config={"frontend": {"port": head.port}})[0]
                c.daemons.pop()  # two_nodes also made a node B daemon: not used
                head.start()
                check(faults.wait_ready_ranks(head.port, 2, 25, ns=a), "the new head has 2 ready ranks")
                load.outage(start=False)
                check(load.wait_ok(20, 30), "the load is served by the new head")
            finally:
                report = load.stop()
            faults.check_accounting(report, f"head outage {round_}")
            since = node_b.log_text()[mark:]
            if round_ == 1:
                check_eq(node_b.ranks().get(1), rank1, "rank 1 is the same process (within the grace period)")
            else:
                check(re.search(r"rank 1: error: nothing from the head .*\[head-grace-expired\]", since),
                      "rank 1 stopped after the grace period", since)
                check(not pid_alive(rank1), "the old rank 1 process is gone")
                check(node_b.ranks().get(1) not in (None, rank1), "a new rank 1 process serves", node_b.ranks())
                check(re.search(r"restarting rank 1: the head is back", since), "node B restarted it when the head was back")
            check_eq(node_b.pid, node_b_pid, "node B's daemon is the same process")
        check_eq(head.stop(), 0, "the head stops cleanly")
        check_eq(node_b.stop(), 0, "node B stops cleanly")
        c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=150)
