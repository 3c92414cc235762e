"""Fault tolerance: the start-up barrier. The head waits for every rank up to
handshake.ready_timeout; with fewer than data_parallel.min_ranks ready it refuses to serve and
says which ranks (and nodes) are missing, then serves once enough have joined.

Head: rank 0, DP=2, min_ranks = 2, ready_timeout 3 s; node B (rank 1) is started only later.
Checks: after the deadline the head logs an error naming rank 1 [below-min-ranks] and still
reports READY=1 to the service manager (so systemd does not kill it); /health answers 503
with status "unavailable" and lists rank 1; a completion gets a clear 503 (below-min-ranks).
When node B starts, rank 1 joins, /health answers 200 and requests are served.
"""

import faults
from harness import check, check_eq, run_test
from netns import Cluster, Network


def main() -> None:
    with Network("fm") as net:
        a, b = net.add_nodes("head", "b")
        with Cluster(net, "ipv4", handshake={"ready_timeout": 3.0}) as c:
            head, node_b = faults.two_nodes(c, a, b, head_config={"data_parallel": {"min_ranks": 2}})
            head.start()
            head.wait_ready(20)
            check(head.wait_log(r"error: only 1 of 2 ranks are ready after 3 s .*fewer than data_parallel.min_ranks \(2\); "
                                r"refusing requests until enough are; missing: rank 1 \(starting\) \[below-min-ranks\]", 5),
                  "the head logs that it refuses to serve and names rank 1", head.log_text()[-1500:])
            status = head.request("GET", "/health")
            check_eq((status.status, status.json()),
                     (503, {"status": "unavailable", "ready_ranks": 1, "ranks": 2, "missing": ["rank 1 (starting)"]}),
                     "/health")
            code, body = head.complete("below the minimum", max_tokens=4)
            check(code == 503 and body["error"]["code"] == "below-min-ranks" and "data_parallel.min_ranks" in body["error"]["message"],
                  "a completion gets a clear 503", (code, body))
            node_b.start()
            check(head.wait_ready_ranks(2, 20), "rank 1 joins")
            check_eq(head.health(), {"status": "ok", "ready_ranks": 2, "ranks": 2}, "/health once both are ready")
            code, body = head.complete("enough ranks", max_tokens=4)
            check_eq(code, 200, "a completion is served")
            check_eq(head.stop(), 0, "the head stops cleanly")
            check_eq(node_b.stop(), 0, "node B stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=90)
