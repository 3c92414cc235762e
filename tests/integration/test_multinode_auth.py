"""Issue 3, test 2: only authorized keys get in; NULL/PLAIN peers and garbage get nothing.

Three namespaces: the head (DP=4, ranks 0-1), node B (authorized, rank 2) and node C, whose key
is not in the head's authorized_keys (it claims rank 3). Checks that:
  - node C is refused: its rank never becomes ready, the head logs "refused a connection from
    <C's address>: key <C's fingerprint> ... (unauthorized-key)", node C's rank says the head
    refused its key, and the head serves with the other three ranks;
  - a python3-zmq DEALER using the NULL mechanism, one using PLAIN, and one using CURVE with
    an authorized key but the wrong server key each send a HELLO and get nothing back;
  - a raw TCP connection sending random bytes is dropped by the head;
  - after all that the head still has the same 3 ready ranks (same processes) and serves
    correct completions.
"""

import random
import time

import harness
from harness import check, check_eq, log, run_test, slow_factor
from netns import (Cluster, Network, Peer, completion_load, make_key, raw_tcp_exchange, ready_lines)


def main() -> None:
    with Network("au") as net:
        a, b, cns = net.add_nodes("head", "b", "c")
        with Cluster(net, "ipv4") as c:
            head = c.head(a, dp=4, dpl=2, authorized=[("node-b", "2-2")])
            node_b = c.headless(b, "node-b", dp=4, dpl=1, dpr=2)
            intruder_key = c.key("node-c")  # generated, never authorized
            node_c = c.headless(cns, "node-c", dp=4, dpl=1, dpr=3)
            head.start()
            node_b.start()
            node_c.start()
            check(head.wait_ready_ranks(3, 30), "the head has 3 ready ranks (0, 1 and node B's 2)", head.health())
            node_b.wait_ready(30)
            node_c.wait_ready(30)

            # --- the node with an unknown key
            pattern = (rf"refused a connection from (::ffff:)?{cns.ipv4.replace('.', '[.]')}(:\d+)?: key "
                       rf"{intruder_key.fingerprint.replace('+', '[+]')} is not in security\.authorized_keys "
                       rf"\(unauthorized-key\)")
            check(head.wait_log(pattern, 15), f"the head logs the refusal with node C's address and key fingerprint "
                                              f"{intruder_key.fingerprint}", harness.tail(head.log_text(), 2000))
            check(node_c.wait_log(r"rank 3: error: the head at tcp://\S+ refused this node's key", 10),
                  "node C's rank says the head refused its key", harness.tail(node_c.log_text(), 2000))
            time.sleep(2.0)  # node C keeps retrying meanwhile
            check_eq(head.health(), {"status": "ok", "ready_ranks": 3, "ranks": 4, "missing": ["rank 3 (starting)"]}, "/health after node C's attempts")
            check(3 not in ready_lines(head) and "joined from node 'node-c'" not in head.log_text(),
                  "rank 3 never joined", ready_lines(head))
            check(intruder_key.secret not in head.log_text() + node_c.log_text(), "no secret key in any log")
            ranks = {**head.ranks(), **node_b.ranks()}
            check_eq(sorted(ranks), [0, 1, 2], "the serving rank processes")
            problems = completion_load(head, [f"while node C knocks {i}" for i in range(12)], 24)
            check(not problems, "the head serves correct completions with the other ranks", problems[:5])

            # --- peers that do not speak CURVE, or not with this head
            endpoint = c.endpoint()
            node_b_key = c.key("node-b")
            wrong_server = make_key(c.tmp, "not-the-head")
            attempts = [("NULL", dict()),
                        ("PLAIN", dict(plain=("node-b", "secret"))),
                        ("CURVE with the wrong server key", dict(key=node_b_key, server_key=wrong_server.public))]
            for label, opts in attempts:
                with Peer(cns, endpoint, name=label, **opts) as peer:
                    peer.hello(2, node="node-b")
                    peer.hello(3, node="node-b")
                    got = peer.recv(2.0)  # a negative: no need to scale it
                    check(got is None, f"a {label} peer's HELLO gets nothing back", got)
                    check(not peer.handshake_succeeded(0.1), f"the {label} peer never completes a ZMTP handshake",
                          peer.events)
            log_text = head.log_text()
            log(f"  head log about these peers: "
                f"{[l for l in log_text.splitlines() if 'refused a connection' in l and cns.ipv4 in l]}")

            # --- random bytes on a raw TCP connection, and a NULL greeting followed by junk
            rng = random.Random(7)
            greeting = (b"\xff" + bytes(8) + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" + bytes(31))
            payloads = [("64 random bytes", rng.randbytes(64)),
                        ("4096 random bytes", rng.randbytes(4096)),
                        ("a ZMTP 3.0 NULL greeting and 1000 random bytes", greeting + rng.randbytes(1000))]
            for label, data in payloads:
                closed, received, took = raw_tcp_exchange(cns, a.ipv4, c.rpc_port, data, 15 * slow_factor())
                check(closed, f"{label}: the head drops the connection ({took:.2f} s)")
                check(len(received) <= 64, f"{label}: the head sent nothing beyond a ZMTP greeting "
                                           f"({len(received)} bytes)", received)

            # --- nothing disturbed
            check_eq(head.health(), {"status": "ok", "ready_ranks": 3, "ranks": 4, "missing": ["rank 3 (starting)"]}, "/health at the end")
            check_eq({**head.ranks(), **node_b.ranks()}, ranks, "the same rank processes serve")
            check(head.running() and node_b.running(), "the head and node B still run")
            problems = completion_load(head, [f"after the garbage {i}" for i in range(12)], 24)
            check(not problems, "the head still serves correct completions", problems[:5])
            check_eq(head.stop(), 0, "the head stops cleanly")
            check_eq(node_b.stop(), 0, "node B stops cleanly")
            check_eq(node_c.stop(), 0, "node C stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=90)
