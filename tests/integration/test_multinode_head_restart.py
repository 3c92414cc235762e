"""Issue 3, test 5: the head restarts while a headless node runs; the node's ranks come back.

Seed example 1 (head: ranks 0-1; node B: ranks 2-3) over IPv4 with CURVE. The head is stopped
with SIGTERM and started again (same config and keys) while node B keeps running untouched.
Checks that node B's daemon and rank processes are the same ones throughout (nothing was
restarted by hand or by node B), that they notice the lost head and register again, that the
new head reaches 4 ready ranks within a bound, and that completions are served by node B's
ranks again (their engines step: voluntary context switches of the rank processes). Then the
same once more with the head killed by SIGKILL (no goodbye at all).
"""

import re
import signal
import time

from harness import check, check_eq, log, run_test, slow_factor, wait_until
from netns import Cluster, Network, completion_load, rank_switches, ready_lines

REJOIN_BOUND = 20.0  # seconds from the new head's start to 4 ready ranks


def serve_check(head, node_b, what: str) -> None:
    remote = node_b.ranks()
    before = rank_switches(remote)
    problems = completion_load(head, [f"{what} request {i}" for i in range(16)], 96)
    check(not problems, f"{what}: 16 concurrent completions are correct", problems[:5])
    work = {r: v - before[r] for r, v in rank_switches(remote).items()}
    check(all(v >= 72 for v in work.values()), f"{what}: node B's ranks 2 and 3 served some of them", work)


def main() -> None:
    with Network("hr") as net:
        a, b = net.add_nodes("head", "b")
        with Cluster(net, "ipv4") as c:
            head = c.head(a, dp=4, dpl=2, authorized=[("node-b", "2-3")])
            node_b = c.headless(b, "node-b", dp=4, dpl=2, dpr=2)
            c.start_ready(head, node_b)
            node_b_pid, node_b_ranks = node_b.pid, node_b.ranks()
            check_eq(sorted(node_b_ranks), [2, 3], "node B's ranks")
            serve_check(head, node_b, "before the restart")

            for round_, sig in enumerate((signal.SIGTERM, signal.SIGKILL), 1):
                log(f"--- round {round_}: the head goes away ({signal.Signals(sig).name}) and comes back")
                mark = len(node_b.log_text())
                since = lambda: node_b.log_text()[mark:]  # noqa: E731
                if sig == signal.SIGTERM:
                    check_eq(head.stop(sig), 0, "the head exits 0 on SIGTERM")
                else:
                    head.kill()
                    check(wait_until(lambda: not head.tagged_processes(), 10 * slow_factor()),
                          "the old head's ranks are gone too (PR_SET_PDEATHSIG)")
                check(wait_until(lambda: len(re.findall(r"rank [23]: warning: lost the connection to the head", since())) == 2,
                                 10 * slow_factor()), "both of node B's ranks notice the lost head", since())
                time.sleep(1.0)
                check(node_b.running(), "node B still runs without its head")
                check_eq(node_b.ranks(), node_b_ranks, "node B's rank processes are untouched")

                head = c.head(a, dp=4, dpl=2, authorized=[("node-b", "2-3")])
                t0 = time.monotonic()
                head.start()
                check(head.wait_ready_ranks(4, REJOIN_BOUND), f"the new head has 4 ready ranks within "
                                                              f"{REJOIN_BOUND * slow_factor():.0f} s", head.health())
                took = time.monotonic() - t0
                log(f"  all 4 ranks ready {took:.1f} s after the new head started")
                check_eq(ready_lines(head), {0: "head", 1: "head", 2: "node-b", 3: "node-b"},
                         "node B's ranks registered with the new head from node-b")
                log("  node B meanwhile:\n    " + "\n    ".join(since().splitlines()))
                check(all(re.search(rf"rank {r}: notice: the head no longer knows this rank", since()) for r in (2, 3)),
                      "node B's ranks log their re-registration", since())
                check_eq(node_b.pid, node_b_pid, "node B's daemon is the same process")
                check_eq(node_b.ranks(), node_b_ranks, "node B's rank processes are the same ones")
                serve_check(head, node_b, f"after restart {round_}")
            check_eq(head.stop(), 0, "the head stops cleanly")
            check(node_b.running(), "node B outlives the head")
            check_eq(node_b.stop(), 0, "node B stops cleanly on SIGTERM")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=90)
