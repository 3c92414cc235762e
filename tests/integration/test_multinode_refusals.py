"""Issue 3, tests 3 and 4: bad registrations are refused with their reason; nothing else moves.

A head (DP=4, ranks 0-1) and node B (ranks 2-3) serve; scripted python3-zmq peers with
authorized CURVE keys (node-p: any rank; node-r: ranks=3-3 in authorized_keys) then try:
  - rank 0, which the head's own rank serves        → REFUSED rank-not-owned / duplicate-rank
  - rank 2 from node-r, whose key allows only rank 3 → REFUSED rank-not-owned
  - rank 4 with DP size 4                           → REFUSED rank-out-of-range
  - a HELLO with protocol major 1 (before REQUEST)  → REFUSED version-mismatch, naming 1.0 and 2.0
  - a HELLO stating DP size 8 (the head has 4)      → REFUSED config-mismatch naming both values
  - a HELLO stating another model                   → REFUSED config-mismatch naming both models
  - a HEARTBEAT before any HELLO                    → REFUSED not-registered
  - bytes that are not msgpack                      → REFUSED malformed
Each refusal is also in the head's log with the peer's node name and key fingerprint. After all
of them: /health still says 4 ready ranks, the same rank processes run (rank 0 serves on),
completions are correct and reach every rank, and node B's log is untouched by the attempts.
"""

import re

from harness import check, check_eq, check_in, run_test, slow_factor
from netns import (CONFIG, ERROR, HEARTBEAT, MODEL, PROTOCOL, REFUSED, Cluster, Network, Peer, completion_load,
                   rank_switches, ready_lines)


def expect_refused(peer: Peer, what: str, codes: tuple, send, message_has: tuple = ()) -> dict:
    send()
    m = peer.recv_type((CONFIG, REFUSED, ERROR), 10 * slow_factor())
    check(m is not None and m.type == REFUSED, f"{what}: REFUSED", m)
    body = m.body
    check(isinstance(body, dict) and body.get("code") in codes,
          f"{what}: reason code {body.get('code')!r} in {codes}; message {body.get('message')!r}", body)
    for part in message_has:
        check_in(part, body.get("message", ""), f"{what}: the REFUSED message")
    check_eq((m.major, m.minor), PROTOCOL, f"{what}: the reply's protocol version")
    return body


def main() -> None:
    with Network("rf") as net:
        a, b, p = net.add_nodes("head", "b", "p")
        with Cluster(net, "ipv4") as c:
            head = c.head(a, dp=4, dpl=2, authorized=[("node-b", "2-3"), ("node-p", None), ("node-r", "3-3")])
            node_b = c.headless(b, "node-b", dp=4, dpl=2, dpr=2)
            c.start_ready(head, node_b)
            ranks = {**head.ranks(), **node_b.ranks()}
            check_eq(sorted(ranks), [0, 1, 2, 3], "rank processes")
            node_b_log = node_b.log_text()
            endpoint, server = c.endpoint(), c.key("head").public
            kp, kr = c.key("node-p"), c.key("node-r")

            with Peer(p, endpoint, kp, server, name="node-p") as peer:
                check(peer.handshake_succeeded(10 * slow_factor()), "the authorized peer completes the CURVE handshake")
                expect_refused(peer, "rank 0, already served by the head's rank 0", ("duplicate-rank", "rank-not-owned"),
                               lambda: peer.hello(0, node="head"), ("rank 0",))
                expect_refused(peer, "rank 4 of DP size 4", ("rank-out-of-range",),
                               lambda: peer.hello(4), ("rank 4", "4"))
                expect_refused(peer, "a HELLO stating DP size 8", ("config-mismatch",),
                               lambda: peer.hello(3, dp_size=8),
                               ("data_parallel.size: this node says 8, the head has 4",))
                expect_refused(peer, "a HELLO stating another model", ("config-mismatch",),
                               lambda: peer.hello(3, model="other-model"),
                               ("engine.model", "'other-model'", f"'{MODEL}'"))
            # Messages that cannot be used are logged once per connection: one connection each.
            with Peer(p, endpoint, kp, server, name="node-p v2") as peer:
                expect_refused(peer, "a HELLO with protocol 1.0", ("version-mismatch",),
                               lambda: peer.hello(3, major=1, minor=0), ("1.0", "%d.%d" % PROTOCOL))
            with Peer(p, endpoint, kp, server, name="node-p early heartbeat") as peer:
                expect_refused(peer, "a HEARTBEAT before HELLO", ("not-registered",),
                               lambda: peer.send(HEARTBEAT, {"progress": 0, "running": 0, "waiting": 0}))
            with Peer(p, endpoint, kp, server, name="node-p garbage") as peer:
                expect_refused(peer, "bytes that are not a wire message", ("malformed",),
                               lambda: peer.send_raw(b"\xc1\xc1 not msgpack"))
            with Peer(p, endpoint, kr, server, name="node-r") as peer:
                expect_refused(peer, "rank 2 from node-r (authorized for ranks 3-3)", ("rank-not-owned",),
                               lambda: peer.hello(2, node="node-b"), ("rank 2", "node-r"))

            # --- the head's log names each refusal with the peer's node, key and reason
            text = head.log_text()
            fp_p = re.escape(kp.fingerprint)
            for rank, code in ((0, "(duplicate-rank|rank-not-owned)"), (4, "rank-out-of-range"), (3, "config-mismatch")):
                check(re.search(rf"refused rank {rank} from node 'node-p' \(key {fp_p}\): .* \({code}\)", text),
                      f"the head logs the refusal of rank {rank} from node-p with its fingerprint and {code}")
            check(re.search(rf"refused rank 2 from node 'node-r' \(key {re.escape(kr.fingerprint)}\): .*\(rank-not-owned\)",
                            text), "the head logs node-r's refusal with its fingerprint")
            for code in ("version-mismatch", "not-registered", "malformed"):
                check(re.search(rf"warning: .*\({code}\)", text), f"the head logs the {code} refusal")
            check("joined from node 'node-p'" not in text and "joined from node 'node-r'" not in text,
                  "no scripted peer ever joined")

            # --- nothing else disturbed
            check_eq(head.health(), {"status": "ok", "ready_ranks": 4, "ranks": 4}, "/health after the attempts")
            check_eq({**head.ranks(), **node_b.ranks()}, ranks, "the same rank processes run")
            check_eq(ready_lines(head), {0: "head", 1: "head", 2: "node-b", 3: "node-b"}, "rank → node")
            check(not re.search(r"rank \d+ \(node '[^']*'\) .*\[", text), "no rank failed or was replaced",
                  [l for l in text.splitlines() if "error" in l])
            before = rank_switches(ranks)
            problems = completion_load(head, [f"after the refusals {i}" for i in range(16)], 96)
            check(not problems, "16 concurrent completions are correct", problems[:5])
            work = {r: v - before[r] for r, v in rank_switches(ranks).items()}
            check(all(v >= 72 for v in work.values()), "every rank, rank 0 included, still serves", work)
            check_eq(node_b.log_text()[:len(node_b_log)], node_b_log, "node B's log up to the attempts")
            extra = node_b.log_text()[len(node_b_log):]
            check(not re.search(r"warning|error", extra), "node B logged no warning or error meanwhile", extra)
            check_eq(head.stop(), 0, "the head stops cleanly")
            check_eq(node_b.stop(), 0, "node B stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=90)
