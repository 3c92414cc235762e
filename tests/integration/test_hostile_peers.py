"""Hostile peers on the head's rank port: each is refused, logged with its reason code, and
costs the head nothing that lasts.

A head (DP=2, rank 0) and node B (rank 1, authorized for ranks 1-1) serve; from a third
namespace an attacker holding an authorized key (node-p) and attackers holding none try, one
case after the other:
  - 500 TCP connections that never say anything (slowloris): libzmq's handshake timer closes
    every one of them; the head logs and counts them (handshake-incomplete);
  - a NULL-mechanism and a PLAIN-mechanism peer: never answered, logged (mechanism-mismatch,
    or handshake-incomplete when the peer notices the mismatch first and hangs up);
  - 4096 random bytes: the connection is dropped (libzmq takes them for ZMTP 1.0, which it
    refuses on a secured socket without any monitor event, so this one is not counted);
  - a captured CURVE session (handshake and HELLO) replayed byte for byte: refused by the CURVE
    handshake, logged;
  - every message type but HELLO before HELLO: REFUSED not-registered, logged;
  - node-p's valid key claiming node B's rank 1: REFUSED rank-not-owned, logged;
  - a frame larger than daemon.max_message_bytes: libzmq drops the connection unread;
  - a flood of 300 HELLOs on one connection: the first handshake.refusal_rate_limit (here 20)
    within a second are answered, then the peer is ignored for handshake.refusal_mute seconds
    (rate-limited, logged once); once that time is over it is answered again.
After every case a real completion succeeds; at the end both ranks still serve (same
processes), and the head's resident memory and open fds are back to their baseline.
"""

import os
import select
import socket
import time

import harness
from harness import Footprint, check, check_eq, log, run_test, slow_factor
from netns import (Bin, CONFIG, ERROR, HEARTBEAT, OUTPUTS, READY, REFUSED, REQUEST, Cluster, Network, Peer, completion_load,
                   raw_tcp_exchange, refusal_counts)

SLOWLORIS_CONNECTIONS = 500
MAX_MESSAGE_BYTES = 64 << 10
RATE_LIMIT = 20
MUTE_SECONDS = 2.0


def serves(head, what: str) -> None:
    problems = completion_load(head, [f"after {what}"], 8)
    check(not problems, f"a real completion succeeds after {what}", problems)


def logged(head, pattern: str, what: str) -> None:
    check(head.wait_log(pattern, 10 * slow_factor()), f"the head logs {what}", harness.tail(head.log_text(), 1500))


def grew(before: dict, after: dict, reasons: tuple) -> int:
    return sum(after.get(r, 0) - before.get(r, 0) for r in reasons)


def slowloris(ns, host: str, port: int, head) -> None:
    """Opens the connections, checks the head serves meanwhile, then waits for it to close
    every one (it sends its ZMTP greeting first; then end of file)."""
    socks = []
    with ns.entered():
        for _ in range(SLOWLORIS_CONNECTIONS):
            socks.append(socket.create_connection((host, port), timeout=5))
    log(f"  {len(socks)} silent connections open; head has {harness.fd_count(head.pid)} fds")
    serves(head, "opening 500 silent connections")
    left = harness.wait_closed_by_peer(socks, 30 * slow_factor())
    check_eq(left, 0, "silent connections the head did not close within the bound")


def record_session(ns, listen_host: str, target: tuple, key, server_key: str, endpoint_port: int) -> bytes:
    """Relays one CURVE session of node-p (a HELLO and its answer) through a TCP relay in `ns`
    and returns the bytes the client sent."""
    import threading
    with ns.entered():
        listener = socket.create_server((listen_host, endpoint_port))
    sent = bytearray()

    def relay():
        client, _ = listener.accept()
        with ns.entered():
            upstream = socket.create_connection(target, timeout=5)
        pairs = {client: upstream, upstream: client}
        end = time.monotonic() + 20 * slow_factor()
        try:
            while time.monotonic() < end:
                readable, _, _ = select.select(list(pairs), [], [], 0.2)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is client:
                        sent.extend(data)
                    pairs[s].sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()
            listener.close()

    t = threading.Thread(target=relay, daemon=True)
    t.start()
    with Peer(ns, f"tcp://{listen_host}:{endpoint_port}", key, server_key, name="recorded") as peer:
        answer = peer.register(1, node="node-p")
        check_eq(answer.type, REFUSED, "the recorded session's HELLO is answered")
    t.join(25 * slow_factor())
    return bytes(sent)


def main() -> None:
    harness.raise_fd_limit(8192)
    with Network("hp") as net:
        a, b, p = net.add_nodes("head", "b", "p")
        with Cluster(net, "ipv4", handshake={"refusal_rate_limit": RATE_LIMIT, "refusal_mute": MUTE_SECONDS}) as c:
            head = c.head(a, dp=2, dpl=1, authorized=[("node-b", "1-1"), ("node-p", None)],
                          config={"daemon": {"max_message_bytes": MAX_MESSAGE_BYTES}})
            node_b = c.headless(b, "node-b", dp=2, dpl=1, dpr=1)
            head.start()
            node_b.start()
            check(head.wait_ready_ranks(2, 30), "the head has 2 ready ranks", head.health())
            ranks = {**head.ranks(), **node_b.ranks()}
            problems = completion_load(head, [f"warm-up {i}" for i in range(16)], 8)
            check(not problems, "the head serves before the attacks", problems[:3])
            baseline = Footprint(head.pid)
            log(f"  head baseline: {baseline}")
            endpoint, server = c.endpoint(), c.key("head").public
            kp = c.key("node-p")

            # --- slowloris
            before = refusal_counts(head)
            slowloris(p, a.ipv4, c.rpc_port, head)
            after = refusal_counts(head)
            check(grew(before, after, ("handshake-incomplete",)) >= SLOWLORIS_CONNECTIONS,
                  f"the head counts the {SLOWLORIS_CONNECTIONS} silent connections (handshake-incomplete)", after)
            logged(head, r"refused a connection on tcp://\S+: .*\(handshake-incomplete\)", "the silent connections")
            serves(head, "the silent connections")

            # --- NULL and PLAIN mechanisms
            before = refusal_counts(head)
            for label, opts in (("NULL", {}), ("PLAIN", {"plain": ("node-b", "secret")})):
                with Peer(p, endpoint, name=label, **opts) as peer:
                    peer.hello(1, node="node-b")
                    got = peer.recv(2.0)  # a negative: no need to scale it
                    check(got is None, f"a {label} peer's HELLO gets nothing back", got)
            # Whichever side reads the other's greeting first hangs up: when it is the head, it
            # names the mismatch; when it is the peer, the head sees a handshake cut short.
            check(harness.wait_until(lambda: grew(before, refusal_counts(head),
                                                  ("mechanism-mismatch", "handshake-incomplete")) >= 2,
                                     10 * slow_factor(), 0.2),
                  "the head counts both peers (mechanism-mismatch or handshake-incomplete)", refusal_counts(head))
            logged(head, r"refused a connection on tcp://\S+: .*\((mechanism-mismatch|handshake-incomplete)\)",
                   "the NULL and PLAIN peers")
            serves(head, "the NULL and PLAIN peers")

            # --- random bytes
            before = refusal_counts(head)
            closed, received, took = raw_tcp_exchange(p, a.ipv4, c.rpc_port, os.urandom(4096), 15 * slow_factor())
            check(closed, f"random bytes: the head drops the connection ({took:.2f} s)")
            monitor_reasons = ("handshake-incomplete", "protocol-error", "mechanism-mismatch", "curve-handshake-failed")
            # Bytes that are not a ZMTP 3 greeting are dropped by libzmq without a monitor event
            # (it takes them for ZMTP 1.0, which has no security): closed, but not counted.
            log(f"  counted after the random bytes: {refusal_counts(head)}")
            serves(head, "random bytes")

            # --- a captured session replayed
            recorded = record_session(p, p.ipv4, (a.ipv4, c.rpc_port), kp, server, c.rpc_port + 1)
            check(len(recorded) > 200, f"the relay recorded the CURVE session ({len(recorded)} bytes)")
            before = refusal_counts(head)
            closed, received, took = raw_tcp_exchange(p, a.ipv4, c.rpc_port, recorded, 15 * slow_factor())
            check(closed, f"the replayed session: the head drops the connection ({took:.2f} s)")
            check(harness.wait_until(lambda: grew(before, refusal_counts(head), monitor_reasons) >= 1,
                                     10 * slow_factor(), 0.2),
                  "the head counts the replay as a failed handshake", refusal_counts(head))
            after = refusal_counts(head)
            check_eq(grew(before, after, ("rank-not-owned", "duplicate-rank")), 0,
                     "the replayed HELLO never reaches the handshake")
            serves(head, "a replayed session")

            # --- messages before HELLO, and a valid key claiming node B's rank
            with Peer(p, endpoint, kp, server, name="node-p early") as peer:
                check(peer.handshake_succeeded(10 * slow_factor()), "node-p completes the CURVE handshake")
                for type_, body in ((READY, {"max_batch": 1, "device": "cpu"}),
                                    (HEARTBEAT, {"progress": 0, "running": 0, "waiting": 0}),
                                    (OUTPUTS, {"items": [], "running": 0, "waiting": 0}),
                                    (REQUEST, {"id": 1, "path": "/v1/completions", "body": Bin(b"{}")})):
                    peer.send(type_, body)
                    m = peer.recv_type((CONFIG, REFUSED, ERROR), 10 * slow_factor())
                    check(m is not None and m.type == REFUSED and m.body.get("code") == "not-registered",
                          f"type {type_} before HELLO: REFUSED not-registered", m)
            logged(head, r"refusing \w+ from node 'node-p'.*\(not-registered\)", "the messages before HELLO")
            with Peer(p, endpoint, kp, server, name="node-p claims rank 1") as peer:
                m = peer.register(1, timeout=10 * slow_factor(), node="node-b")
                check(m.type == REFUSED and m.body.get("code") == "rank-not-owned",
                      "node-p claiming node B's rank 1: REFUSED rank-not-owned", m)
            logged(head, r"refused rank 1 from node 'node-p'.*\(rank-not-owned\)", "the claim on rank 1")
            serves(head, "messages before HELLO and a claim on another node's rank")

            # --- an oversized frame
            with Peer(p, endpoint, kp, server, name="node-p oversized") as peer:
                check(peer.handshake_succeeded(10 * slow_factor()), "node-p completes the CURVE handshake")
                peer.send_raw(os.urandom(MAX_MESSAGE_BYTES * 4))
                zmq = peer.zmq
                check(peer.wait_event(zmq.EVENT_DISCONNECTED, 10 * slow_factor()),
                      "the head drops a connection sending a frame over daemon.max_message_bytes", peer.events)
            serves(head, "an oversized frame")

            # --- a flood of HELLOs on one connection
            flood = 300
            before = refusal_counts(head)
            with Peer(p, endpoint, kp, server, name="node-p flood") as peer:
                check(peer.handshake_succeeded(10 * slow_factor()), "node-p completes the CURVE handshake")
                for i in range(flood):
                    peer.hello(1, node="node-b", incarnation=i)
                answers = 0
                while peer.recv(1.0) is not None:
                    answers += 1
                log(f"  {answers} answers to {flood} HELLOs")
                check(0 < answers < flood, f"only the first HELLOs of the flood are answered ({answers} of {flood})")
                after = refusal_counts(head)
                check(after.get("rate-limited", 0) - before.get("rate-limited", 0) >= flood - answers - 1,
                      "the head counts the ignored HELLOs (rate-limited)", after)
                logged(head, r"ignoring \S+ for 2s: refused more than 20 times within a second \(rate-limited\)",
                       "muting the flooding peer")
                time.sleep(MUTE_SECONDS + 0.5)
                m = peer.register(1, timeout=10 * slow_factor(), node="node-b")
                check(m.type == REFUSED, "after handshake.refusal_mute the peer is answered again", m)
            serves(head, "a flood of HELLOs")

            # --- nothing disturbed, nothing kept
            check_eq(head.health(), {"status": "ok", "ready_ranks": 2, "ranks": 2}, "/health at the end")
            check_eq({**head.ranks(), **node_b.ranks()}, ranks, "the same rank processes serve")
            problems = completion_load(head, [f"after everything {i}" for i in range(16)], 8)
            check(not problems, "the head serves correct completions at the end", problems[:3])
            baseline.check_returned("after every hostile peer")
            check_eq(head.stop(), 0, "the head stops cleanly")
            check_eq(node_b.stop(), 0, "node B stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=280)
