"""Fault tolerance: a slow, lossy link to a headless node is not a lost node.

Node B reaches the head through a user-space TCP relay in its namespace (netns.TcpDelayProxy)
that adds 200 ms in each direction and "loses" 5% of the chunks: TCP shows a lost segment to
the application as a retransmission delay, so a lost chunk arrives 200 ms later, in order
(Linux's minimum retransmission timeout). With heartbeat_interval 0.5 s and
heartbeat_timeout 2.5 s, under steady load for ~12 s: no loss is declared for rank 1 (no event
at all), node B's rank keeps its process, requests routed to it complete, and every request
completes (no errors at all).
"""

import time

import faults
from harness import check, check_eq, log, run_test
from netns import Cluster, Network, TcpDelayProxy

PROXY_PORT = 23345


def main() -> None:
    with Network("fl") as net:
        a, b = net.add_nodes("head", "b")
        handshake = {"heartbeat_interval": 0.5, "heartbeat_timeout": 2.5}
        with Cluster(net, "ipv4", handshake=handshake) as c:
            proxy = TcpDelayProxy(b, "127.0.0.1", PROXY_PORT, a.ipv4, c.rpc_port, delay=0.2, target_ns=b,
                                  loss=0.05, loss_penalty=0.2)
            try:
                head, node_b = faults.start_two_nodes(c, a, b, ready_timeout=40, head_address="127.0.0.1",
                                                      rpc_port=PROXY_PORT)
                rank1 = node_b.ranks()[1]
                load = faults.Load(head.port, ns=a, max_tokens=16).start()
                try:
                    time.sleep(12.0)
                finally:
                    report = load.stop()
                log(f"  proxy: {proxy.lost_chunks} of {proxy.relayed_chunks} chunks held back as lost")
                check(proxy.relayed_chunks >= 100 and proxy.lost_chunks >= 3,
                      "the relay carried the traffic and delayed some of it as lost",
                      (proxy.relayed_chunks, proxy.lost_chunks))
                faults.check_accounting(report, "a slow, lossy link", min_ok=50)
                check_eq(report.counts()["error"], 0, "no request failed")
                events = faults.rank_events(head.port, ns=a)
                check(not events, "no loss or restart was declared", events)
                check_eq(node_b.ranks().get(1), rank1, "node B's rank 1 is the same process")
                served = [v for n, l, v in faults.metrics(head.port, ns=a)
                          if n == "dpengine_rank_requests_total" and l.get("rank") == "1"]
                check(served and served[0] >= 10, "rank 1 (behind the slow link) served requests", served)
                check_eq(head.stop(), 0, "the head stops cleanly")
                check_eq(node_b.stop(), 0, "node B stops cleanly")
            finally:
                proxy.close()
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=120)
