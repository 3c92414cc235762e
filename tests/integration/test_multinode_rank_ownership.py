"""Issue 14, item 3: an authorized key takes only the ranks its node holds.

A head (DP=4, ranks 0-1) and node B (ranks 2-3); both node-b and node-p are in the head's
authorized_keys without ranks= (the line `dpctl keys generate` writes). node-p is a python3-zmq
impostor in a third namespace. Checks that:
  - at each of two head start-ups, the impostor hammering HELLO for ranks 0 and 1 (from before
    the head binds) never gets a CONFIG: the head owns its block from its first moment
    (REFUSED rank-not-owned), and its own ranks 0-1 join from node 'head';
  - before node B registers, the impostor claiming ranks 2-3 (as a serving peer, and again
    and again while node B starts) is refused node-not-registered and gets no CONFIG and no
    REQUEST: an unregistered key holds no ranks;
  - node B then registers and its ranks 2-3 join from node-b (not refused for good, no exit
    77), every completion is correct, all four real ranks serve, and the impostor gets no
    prompt at all.
"""

import threading
import time

import harness
from harness import check, check_eq, log, run_test, slow_factor
from netns import (CONFIG, ERROR, REFUSED, REQUEST, Cluster, Network, Peer, ServingPeer, completion_load,
                   rank_switches, ready_lines)


class Claimer:
    """node-p's peer sending HELLO for `ranks` every `every` s from a thread, until stopped;
    keeps every answer."""

    def __init__(self, peer: Peer, ranks: list[int], node: str, every: float = 0.05):
        self.peer, self.ranks, self.node, self.every = peer, ranks, node, every
        self.answers = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for r in self.ranks:
                self.peer.hello(r, node=self.node)
                self.sent += 1
            deadline = time.monotonic() + self.every
            while (left := deadline - time.monotonic()) > 0:
                m = self.peer.recv(left)
                if m is not None:
                    self.answers.append(m)

    def stop(self) -> list:
        self._stop.set()
        self._thread.join(10)
        return self.answers


def codes(answers: list) -> dict:
    out = {}
    for m in answers:
        key = m.body.get("code") if m.type in (REFUSED, ERROR) and isinstance(m.body, dict) else m.name
        out[key] = out.get(key, 0) + 1
    return out


def main() -> None:
    with Network("ro") as net:
        a, b, p = net.add_nodes("head", "b", "p")
        # The refusal mute would silence the impostor after its first second; this test is about
        # what it is refused, so the limit is high (test_multinode_mute.py covers the mute).
        with Cluster(net, "ipv4", handshake={"refusal_rate_limit": 10000}) as c:
            authorized = [("node-b", None), ("node-p", None)]
            kp, server = c.key("node-p"), c.key("head").public
            endpoint = None

            # --- the head's own ranks at start-up, twice
            for attempt in (1, 2):
                head = c.head(a, dp=4, dpl=2, authorized=authorized)
                endpoint = c.endpoint()
                with Peer(p, endpoint, kp, server, name=f"impostor start-up {attempt}") as peer:
                    claimer = Claimer(peer, [0, 1], node="head")
                    time.sleep(0.5)  # the impostor is knocking before the head binds
                    head.start()
                    up = head.wait_ready_ranks(2, 30 * slow_factor())
                    time.sleep(1.0)
                    answers = claimer.stop()
                check(up, f"start-up {attempt}: the head's ranks 0-1 are ready", head.health())
                got = codes(answers)
                log(f"  start-up {attempt}: {claimer.sent} HELLOs for ranks 0-1 drew {got}")
                check(not any(m.type == CONFIG for m in answers),
                      f"start-up {attempt}: the impostor never gets a CONFIG for the head's ranks", got)
                check(got.get("rank-not-owned", 0) > 0,
                      f"start-up {attempt}: the impostor's claims are refused rank-not-owned", got)
                lines = ready_lines(head)
                check_eq({r: lines.get(r) for r in (0, 1)}, {0: "head", 1: "head"},
                         f"start-up {attempt}: ranks 0-1 join from the head")
                check("joined from node 'node-p'" not in head.log_text(), f"start-up {attempt}: node-p never joined")
                if attempt == 1:
                    check_eq(head.stop(), 0, "the head stops cleanly")

            # --- ranks 2-3 before node B registers
            for rank in (2, 3):
                with Peer(p, endpoint, kp, server, name=f"impostor serving rank {rank}") as peer:
                    forged = ServingPeer(peer, rank, lambda body, rid: [("FORGED ", 1)], node="node-b").start()
                    forged._thread.join(20 * slow_factor())
                    check(forged.config is None, f"the impostor gets no CONFIG for rank {rank}", forged.log)
                    check(any("node-not-registered" in e for e in forged.errors),
                          f"the impostor's HELLO for rank {rank} is refused node-not-registered", forged.errors)
                    forged.stop()
            check(harness.wait_until(lambda: "node-not-registered" in head.log_text(), 10 * slow_factor(), 0.2),
                  "the head logs the refusal (node-not-registered)")

            # --- node B starts while the impostor keeps claiming its ranks
            node_b = c.headless(b, "node-b", dp=4, dpl=2, dpr=2)
            with Peer(p, endpoint, kp, server, name="impostor during node B's start") as peer:
                claimer = Claimer(peer, [2, 3], node="node-b", every=0.1)
                node_b.start()
                node_b.wait_ready(60)
                check(head.wait_ready_ranks(4, 60), "the head has 4 ready ranks", head.health())
                answers = claimer.stop()
            got = codes(answers)
            log(f"  {claimer.sent} HELLOs for ranks 2-3 during node B's start drew {got}")
            check(not any(m.type in (CONFIG, REQUEST) for m in answers),
                  "the impostor gets no CONFIG and no REQUEST while node B starts", got)
            check_eq(ready_lines(head), {0: "head", 1: "head", 2: "node-b", 3: "node-b"}, "rank → node")
            check("joined from node 'node-p'" not in head.log_text(), "node-p never joined")
            b_log = node_b.log_text()
            check("the head refused rank" not in b_log and "status 77" not in b_log,
                  "node B's ranks were never refused for good", harness.tail(b_log, 2000))

            # --- every completion comes from the real ranks
            ranks = {**head.ranks(), **node_b.ranks()}
            check_eq(sorted(ranks), [0, 1, 2, 3], "rank processes on the head and node B")
            with Peer(p, endpoint, kp, server, name="impostor during the load") as peer:
                claimer = Claimer(peer, [2, 3], node="node-b", every=0.1)
                before = rank_switches(ranks)
                problems = completion_load(head, [f"owned ranks only {i}" for i in range(16)], 64)
                answers = claimer.stop()
            check(not problems, "16 concurrent completions are correct (none forged)", problems[:5])
            work = {r: v - before[r] for r, v in rank_switches(ranks).items()}
            check(all(v >= 48 for v in work.values()), "every real rank served", work)
            got = codes(answers)
            check(not any(m.type in (CONFIG, REQUEST) for m in answers),
                  "the impostor claiming node B's registered ranks gets nothing", got)
            check(got.get("rank-not-owned", 0) > 0, "its claims are refused rank-not-owned", got)
            check_eq(head.health(), {"status": "ok", "ready_ranks": 4, "ranks": 4}, "/health at the end")
            check_eq(head.stop(), 0, "the head stops cleanly")
            check_eq(node_b.stop(), 0, "node B stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=240)
