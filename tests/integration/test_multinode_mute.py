"""Issue 14, item 5 and the unregistered-reply flood: the refusal mute never locks a node's own
ranks out, ranks say HELLO again when the head does not answer, and a flood of messages before
HELLO draws no flood of replies.

Part 1 (CURVE): a head (DP=17, rank 0) and node B (16 synthetic ranks, 1-16; its key without
ranks=), handshake.refusal_rate_limit = 4 and refusal_mute = 600 s:
  - node B crashes (SIGKILL, so no goodbye: an orderly stop frees its ranks at once) and
    starts again at once: its 16 new ranks' duplicate-rank retries (the head still holds
    their predecessors until handshake.heartbeat_timeout) go far over the rate; every rank is
    ready again within the bound (the old head muted node B's address for good);
  - node-p, another authorized key at node B's address, floods bad HELLOs until the head
    ignores it (its next HELLO gets no answer); node B restarts again and every rank is ready
    within the bound; completions are correct on all 17 ranks;
  - node-p floods 20000 HEARTBEATs, and on another connection 20000 NODE_STATUS, before any
    HELLO: each connection gets at most refusal_rate_limit answers (the old head answered
    nearly every one), counted as rate-limited.
Part 2 (security.insecure, so the mute is by address): a peer at node B's address floods bad
HELLOs, so the head ignores that address for 15 s; node B starts meanwhile. Its ranks' first
HELLOs go unanswered; they send them again with back-off and are ready soon after the mute
ends (handshake.connect_timeout is 300 s, so no restart of a rank can stand in for that).
"""

import re
import time

import harness
from harness import check, check_eq, log, run_test, slow_factor
from netns import (CONFIG, ERROR, HEARTBEAT, REFUSED, Cluster, Network, Peer, completion_load, refusal_counts)

NODE_STATUS = 13
RATE_LIMIT = 4
B_RANKS = 16
DP = B_RANKS + 1


def flood_until_ignored(peer: Peer, what: str) -> None:
    """Bad HELLOs (node-p claiming rank 0, the head's) until the head stops answering."""
    check(peer.handshake_succeeded(10 * slow_factor()), f"{what}: the flooding peer completes its handshake")
    for i in range(200):
        peer.hello(0, node="head", incarnation=i)
    answers = 0
    while peer.recv(1.0) is not None:
        answers += 1
    check(0 < answers < 200, f"{what}: the head answers only the first of 200 bad HELLOs ({answers})")
    peer.hello(0, node="head")
    check(peer.recv(2.0) is None, f"{what}: the head now ignores the flooding peer")


def restart_ready(c: Cluster, ns, head, old, what: str, bound: float):
    """Kills node B (a crash: it says no goodbye, so the head still holds its ranks) and starts
    it again at once; returns the new daemon once the head has all DP ranks ready, failing after
    `bound` seconds."""
    joined = lambda: len(re.findall(r"rank \d+ is ready on node node-b", head.log_text()))
    before = joined()
    old.kill()
    check(not old.running(), f"{what}: node B's daemon is gone")
    node_b = c.headless(ns, "node-b", dp=DP, dpl=B_RANKS, dpr=1)
    t0 = time.monotonic()
    node_b.start()
    # The head still counts the old ranks until handshake.heartbeat_timeout: wait for 16 new
    # "is ready" lines and all DP ranks ready.
    ready = harness.wait_until(lambda: joined() - before >= B_RANKS and head.ready_ranks() == DP,
                               bound * slow_factor(), 0.2)
    took = time.monotonic() - t0
    log(f"  {what}: {head.health()} after {took:.1f} s")
    check(ready, f"{what}: all {DP} ranks are ready again within {bound:.0f} s (took {took:.1f} s)",
          harness.tail(head.log_text(), 3000))
    return node_b


def replies_to_flood(peer: Peer, type_: int, body: dict, n: int) -> int:
    check(peer.handshake_succeeded(10 * slow_factor()), "the flooding peer completes its handshake")
    for _ in range(n):
        peer.send(type_, body)
    replies = 0
    while peer.recv(2.0) is not None:
        replies += 1
    return replies


def curve_part() -> None:
    with Network("mu") as net:
        a, b, p = net.add_nodes("head", "b", "p")
        # heartbeat_timeout 6: the head holds the old ranks long enough for their successors'
        # duplicate-rank retries to go over the rate even on a slow machine.
        handshake = {"refusal_rate_limit": RATE_LIMIT, "refusal_mute": 600, "connect_timeout": 300,
                     "heartbeat_timeout": 6}
        with Cluster(net, "ipv4", handshake=handshake) as c:
            head = c.head(a, dp=DP, dpl=1, authorized=[("node-b", None), ("node-p", None)])
            node_b = c.headless(b, "node-b", dp=DP, dpl=B_RANKS, dpr=1)
            c.start_ready(head, node_b, timeout=60)
            check(head.wait_ready_ranks(DP, 60 * slow_factor()), f"the head has {DP} ready ranks", head.health())
            endpoint, server, kp = c.endpoint(), c.key("head").public, c.key("node-p")

            # --- a quick restart: the node's own duplicate-rank retries go over the rate
            before = refusal_counts(head)
            node_b = restart_ready(c, b, head, node_b, "quick restart", 45)
            after = refusal_counts(head)
            dup = after.get("duplicate-rank", 0) - before.get("duplicate-rank", 0)
            log(f"  duplicate-rank refusals during the restart: {dup}")
            check(dup > RATE_LIMIT, f"the restart drew more duplicate-rank refusals than the rate ({dup})")

            # --- another key at node B's address gets itself ignored; node B is not
            with Peer(b, endpoint, kp, server, name="node-p at node B's address") as peer:
                flood_until_ignored(peer, "node-p at node B's address")
                node_b = restart_ready(c, b, head, node_b, "restart after node-p's flood", 45)
                peer.hello(0, node="head")
                check(peer.recv(2.0) is None, "node-p is still ignored")
            problems = completion_load(head, [f"after the floods {i}" for i in range(2 * DP)], 16)
            check(not problems, f"{2 * DP} completions are correct", problems[:5])

            # --- floods of messages before HELLO draw at most refusal_rate_limit replies each
            flood = 20000
            before = refusal_counts(head)
            with Peer(p, endpoint, kp, server, name="heartbeat flood") as peer:
                replies = replies_to_flood(peer, HEARTBEAT, {"progress": 0, "running": 0, "waiting": 0}, flood)
            log(f"  {replies} replies to {flood} HEARTBEATs before HELLO")
            check(0 < replies <= RATE_LIMIT, f"a HEARTBEAT flood draws at most {RATE_LIMIT} replies ({replies})")
            with Peer(p, endpoint, kp, server, name="node status flood") as peer:
                replies = replies_to_flood(peer, NODE_STATUS, {"ranks": []}, flood)
            log(f"  {replies} replies to {flood} NODE_STATUS before NODE_HELLO")
            check(0 < replies <= RATE_LIMIT, f"a NODE_STATUS flood draws at most {RATE_LIMIT} replies ({replies})")
            after = refusal_counts(head)
            limited = after.get("rate-limited", 0) - before.get("rate-limited", 0)
            check(limited >= flood, f"the unanswered messages are counted as rate-limited ({limited})", after)

            check_eq(head.health(), {"status": "ok", "ready_ranks": DP, "ranks": DP}, "/health at the end")
            check_eq(head.stop(), 0, "the head stops cleanly")
            check_eq(node_b.stop(), 0, "node B stops cleanly")
            c.check_logs_clean()


def insecure_part() -> None:
    mute = 15
    with Network("mi") as net:
        a, b = net.add_nodes("head", "b")
        handshake = {"refusal_rate_limit": RATE_LIMIT, "refusal_mute": mute, "connect_timeout": 300}
        with Cluster(net, "ipv4", insecure=True, handshake=handshake) as c:
            head = c.head(a, dp=5, dpl=1)
            head.start()
            check(head.wait_ready_ranks(1, 30 * slow_factor()), "the head's rank 0 is ready", head.health())
            node_b = c.headless(b, "node-b", dp=5, dpl=4, dpr=1)
            with Peer(b, c.endpoint(), name="flood at node B's address") as peer:
                flood_until_ignored(peer, "a peer at node B's address")
                muted_at = time.monotonic()
                node_b.start()
                bound = mute + 30
                ready = head.wait_ready_ranks(5, bound * slow_factor())
                took = time.monotonic() - muted_at
            log(f"  ready after {took:.1f} s (mute {mute} s): {head.health()}")
            check(ready, f"node B's ranks are ready within {bound} s of the mute (took {took:.1f} s)",
                  harness.tail(head.log_text(), 3000))
            check(harness.wait_until(lambda: "sending it again with back-off" in node_b.log_text(), 5, 0.2),
                  "node B's ranks say that they sent HELLO again")
            check("the head refused rank" not in node_b.log_text(), "no rank of node B was refused for good")
            problems = completion_load(head, [f"after the mute {i}" for i in range(10)], 16)
            check(not problems, "10 completions are correct", problems[:5])
            check_eq(head.stop(), 0, "the head stops cleanly")
            check_eq(node_b.stop(), 0, "node B stops cleanly")
            c.check_logs_clean()


def main() -> None:
    insecure_part()
    curve_part()


if __name__ == "__main__":
    run_test(main, timeout=290)
