"""Issue 3, test 3: a headless node stating DP size 8 to a head with DP size 4 is refused.

The head runs DP=4 with ranks 0-1 (-dpl 2); node B is started as `--headless -dp 8 -dpl 2
-dpr 2`. Its ranks must state the node's DP size in HELLO; the head refuses them with
config-mismatch naming the field and both values ("data_parallel.size: this node says 8, the
head has 4"), which node B's ranks log before exiting with the non-retryable exit code 77
(EX_NOPERM, daemon/core/exit_codes.hpp). The head keeps serving with its own two ranks, and a
correctly configured node B (-dp 4) then joins. (test_multinode_refusals checks the same
refusal from a scripted python3-zmq peer.)
"""

import re
import time

from harness import check, check_eq, log, run_test, slow_factor, wait_until
from netns import Cluster, Network, completion_load, ready_lines

MESSAGE = "data_parallel.size: this node says 8, the head has 4"


def main() -> None:
    with Network("dm") as net:
        a, b = net.add_nodes("head", "b")
        with Cluster(net, "ipv4") as c:
            head = c.head(a, dp=4, dpl=2, authorized=[("node-b", "2-3")])
            wrong = c.headless(b, "node-b", dp=8, dpl=2, dpr=2)
            head.start()
            check(head.wait_ready_ranks(2, 30), "the head's own two ranks are ready", head.health())
            wrong.start()
            wrong.wait_ready(30)
            refused = wrong.wait_log(rf"rank 2: error: the head refused rank 2: {re.escape(MESSAGE)} \(config-mismatch\)", 20)
            if not refused and ready_lines(head).get(2) == "node-b":
                log("  node B's ranks joined a head with another DP size: the headless daemon's ranks do not state "
                    "data_parallel.size in HELLO (hello.dp_size is 0)")
            check(refused, f"node B's rank 2 logs the refusal: {MESSAGE!r} (config-mismatch)", wrong.log_text())
            check(wrong.wait_log(rf"rank 3: error: the head refused rank 3: {re.escape(MESSAGE)}", 10),
                  "node B's rank 3 logs the refusal too")
            check(head.wait_log(rf"refused rank 2 from node 'node-b' \(key {re.escape(c.key('node-b').fingerprint)}\): "
                                rf"{re.escape(MESSAGE)} \(config-mismatch\)", 10),
                  "the head logs the refusal with node B's name, fingerprint, both values and the reason")
            exits = lambda: re.findall(r"rank (\d) \(pid \d+\) exited with status (\d+)", wrong.log_text())  # noqa: E731
            wait_until(lambda: len(exits()) >= 2, 10 * slow_factor())
            check_eq(sorted(exits()), [("2", "77"), ("3", "77")], "node B's ranks exit with status 77 (refused)")
            time.sleep(1)
            check(not wrong.ranks(), "node B does not restart refused ranks", wrong.ranks())
            check_eq(head.health(), {"status": "ok", "ready_ranks": 2, "ranks": 4,
                                       "missing": ["rank 2 (starting)", "rank 3 (starting)"]}, "/health")
            problems = completion_load(head, [f"mismatch {i}" for i in range(8)], 16)
            check(not problems, "the head serves with its own ranks", problems[:5])
            wrong.stop()

            right = c.headless(b, "node-b", dp=4, dpl=2, dpr=2)
            right.start()
            check(head.wait_ready_ranks(4, 30), "a node B with -dp 4 then joins: 4 ready ranks", head.health())
            problems = completion_load(head, [f"matched {i}" for i in range(8)], 16)
            check(not problems, "completions are correct", problems[:5])
            check_eq(head.stop(), 0, "the head stops cleanly")
            check_eq(right.stop(), 0, "node B stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=60)
