"""A headless node that stops in order (SIGTERM, as `systemctl stop` sends it) says goodbye
over the node link; the head takes it as a notice, not a failure.

The head (rank 0, with its own system bus) in one namespace, headless node B (rank 1) in
another, CURVE, fast heartbeats (timeout 1.5 s). Node B's daemon gets SIGTERM. Checks on the
head: node-b is "stopped" (dpctl nodes), rank 1 is `stopped`, not failed (dpctl ranks and
/metrics), no loss is counted for it, and the head's log has the goodbye as a notice and no
error-level line, no "went silent", no "lost node", also after several heartbeat timeouts.
The head keeps serving with rank 0. Node B started again registers and rank 1 serves again.
"""

import re
import time

import faults
from busharness import SystemBus, dpctl_json, rank_by_number, wait_for_name
from harness import check, check_eq, log, run_test, slow_factor, wait_until
from netns import Cluster, Network


def error_lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if re.search(r": error: ", l)]


def main() -> None:
    with Network("ns") as net, SystemBus() as bus:
        a, b = net.add_nodes("head", "b")
        with Cluster(net, "ipv4", handshake=faults.FAST_HANDSHAKE) as c:
            head = c.head(a, dp=2, dpl=1, authorized=[("node-b", "1-1")], env=bus.env)
            node_b = c.headless(b, "node-b", dp=2, dpl=1, dpr=1)
            c.start_ready(head, node_b)
            check(head.wait_ready_ranks(2, 30), "both ranks are ready", head.health())
            check(wait_for_name(bus, 10), "the head owns org.dpengine1 on its bus")
            node_state = lambda: {n["name"]: n["state"] for n in dpctl_json(bus, "nodes")}.get("node-b")  # noqa: E731
            check(wait_until(lambda: node_state() == "connected", 15 * slow_factor(), interval=0.2),
                  "node-b registered over the node link", node_state())

            check_eq(node_b.stop(), 0, "node B stops cleanly on SIGTERM")
            stopped = wait_until(lambda: rank_by_number(dpctl_json(bus, "ranks"))[1]["state"] == "stopped",
                                 10 * slow_factor(), interval=0.2)
            check(stopped, "the head shows rank 1 stopped", dpctl_json(bus, "ranks"))
            check_eq(node_state(), "stopped", "the head shows node-b stopped")
            # A wrong verdict (silence, a lost node) would show within a few heartbeat timeouts.
            time.sleep(3 * 1.5 * slow_factor())
            check_eq(faults.rank_states(head.port, ns=a).get(1), "stopped", "rank 1 is still stopped (/metrics)")
            check_eq(node_state(), "stopped", "node-b is still stopped, not lost")
            events = faults.rank_events(head.port, ns=a)
            log(f"  head events: {events}")
            check_eq(faults.losses(head.port, 1, ns=a), 0, "no loss counted for rank 1")
            text = head.log_text()
            check(re.search(r"notice: node 'node-b' is stopping \(ranks 1\); its ranks stop with it \[node-stopped\]",
                            text), "the head logs the goodbye as a notice", text[-2000:])
            check(not error_lines(text), "no error-level line in the head's log", "\n".join(error_lines(text)))
            check("went silent" not in text and "lost node" not in text, "no 'went silent', no 'lost node'",
                  text[-2000:])
            code, body = head.complete("after node B stopped", max_tokens=4)
            check_eq(code, 200, "the head serves with rank 0")

            node_b = c.headless(b, "node-b", dp=2, dpl=1, dpr=1)
            node_b.start()
            check(head.wait_ready_ranks(2, 30), "node B started again: rank 1 is ready again", head.health())
            check(wait_until(lambda: node_state() == "connected", 15 * slow_factor(), interval=0.2),
                  "node-b is connected again", node_state())
            check_eq(node_b.stop(), 0, "node B stops cleanly again")
            check_eq(head.stop(), 0, "the head stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=150)
