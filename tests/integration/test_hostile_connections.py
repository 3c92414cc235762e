"""Connections to the head's rank port that would cost the head its log or its descriptors.

A head (DP=2, rank 0) and node B (rank 1) serve; from a third namespace:
  - 3000 connections, each with a fresh random CURVE key that is not authorized: each is
    refused and counted (unauthorized-key), but the head logs at most one line for the
    reason every 10 s (dpengine-protocol(7)); the next line after the window says how many
    were suppressed, and the lines and those counts add up to the refusals;
  - 300 connections with an authorized key (node-p) that complete the CURVE handshake and
    never send HELLO: once handshake.register_timeout (here 5 s) has passed, the head closes
    every one, counts them (registration-timeout) and logs them in a line or two; node B's
    rank and node link, registered long before, stay connected.
Afterwards the same rank processes serve correct completions, and the head's open fds are
back to their baseline.
"""

import re
import time

import harness
from harness import Footprint, check, check_eq, log, run_test, slow_factor
from netns import Cluster, Network, completion_load, refusal_counts, zmq_module

KEY_FLOOD = 3000
SILENT_CONNECTIONS = 300
REGISTER_TIMEOUT = 5.0
LOG_WINDOW = 10.0


def serves(head, what: str) -> None:
    problems = completion_load(head, [f"after {what} {i}" for i in range(8)], 8)
    check(not problems, f"real completions succeed after {what}", problems[:3])


class Dealers:
    """DEALER sockets of one ZeroMQ context whose I/O thread lives in `ns` (it starts with
    the context's first socket, inside the namespace). They never reconnect: each counts
    once."""

    def __init__(self, ns):
        self.zmq = zmq_module()
        with ns.entered():
            self.ctx = self.zmq.Context(1)
            self.anchor = self.ctx.socket(self.zmq.DEALER)
        self.sockets = []

    def connect(self, endpoint: str, server_key: str, public: bytes, secret: bytes) -> None:
        s = self.ctx.socket(self.zmq.DEALER)
        s.setsockopt(self.zmq.LINGER, 0)
        s.setsockopt(self.zmq.RECONNECT_IVL, -1)
        s.curve_serverkey = server_key.encode()
        s.curve_publickey = public
        s.curve_secretkey = secret
        s.connect(endpoint)
        self.sockets.append(s)

    def close_sockets(self) -> None:
        for s in self.sockets:
            s.close(0)
        self.sockets = []

    def close(self) -> None:
        self.close_sockets()
        self.anchor.close(0)
        self.ctx.term()


def established(ns, port: int) -> int:
    """TCP connections from `ns` to `port` that are established."""
    out = ns.run("ss", "-Htn", "state", "established", f"( dport = :{port} )").stdout
    return sum(1 for line in out.decode().splitlines() if line.strip())


def lines_since(head, offset: int, reason: str) -> list[str]:
    return [line for line in head.log_text()[offset:].splitlines() if f"({reason})" in line]


def suppressed_counts(lines: list[str]) -> int:
    total = 0
    for line in lines:
        m = re.search(r"\((\d+) more suppressed since the last line for this reason\)", line)
        total += int(m.group(1)) if m else 0
    return total


def key_flood(p, c, head) -> None:
    zmq = zmq_module()
    offset = len(head.log_text())
    before = refusal_counts(head).get("unauthorized-key", 0)
    dealers = Dealers(p)
    started = time.monotonic()
    try:
        done = 0
        while done < KEY_FLOOD:
            batch = min(250, KEY_FLOOD - done)
            for _ in range(batch):
                public, secret = zmq.curve_keypair()
                dealers.connect(c.endpoint(), c.key("head").public, public, secret)
            done += batch
            counted = harness.wait_until(
                lambda: refusal_counts(head).get("unauthorized-key", 0) - before >= done, 60 * slow_factor(), 0.1)
            check(counted, f"the head refused and counted {done} random keys", refusal_counts(head))
            dealers.close_sockets()
        took = time.monotonic() - started
        lines = lines_since(head, offset, "unauthorized-key")
        log(f"  {KEY_FLOOD} random keys in {took:.1f} s: {len(lines)} log line(s) for unauthorized-key")
        allowed = int(took // LOG_WINDOW) + 1
        check(len(lines) <= allowed,
              f"at most one unauthorized-key line per {LOG_WINDOW:.0f} s ({len(lines)} lines in {took:.1f} s, "
              f"allowed {allowed})", lines[:5])
        # One more refusal once a window has passed since any line: its line says how many
        # were left out.
        time.sleep(LOG_WINDOW + 0.5)
        public, secret = zmq.curve_keypair()
        dealers.connect(c.endpoint(), c.key("head").public, public, secret)
        logged = harness.wait_until(lambda: len(lines_since(head, offset, "unauthorized-key")) > len(lines),
                                    10 * slow_factor(), 0.1)
        last = lines_since(head, offset, "unauthorized-key")[-1]
        check(logged and "more suppressed since the last line" in last,
              "after the window the head logs the next refusal with the number suppressed", last)
    finally:
        dealers.close()
    refused = refusal_counts(head).get("unauthorized-key", 0) - before
    lines = lines_since(head, offset, "unauthorized-key")
    check_eq(len(lines) + suppressed_counts(lines), refused,
             "the lines and their suppressed counts add up to the refused keys")


def silent_connections(p, c, head) -> None:
    offset = len(head.log_text())
    before = refusal_counts(head).get("registration-timeout", 0)
    key = c.key("node-p")
    dealers = Dealers(p)
    try:
        for _ in range(SILENT_CONNECTIONS):
            dealers.connect(c.endpoint(), c.key("head").public, key.public.encode(), key.secret.encode())
        opened = harness.wait_until(lambda: established(p, c.rpc_port) >= SILENT_CONNECTIONS, 30 * slow_factor(), 0.2)
        check(opened, f"{SILENT_CONNECTIONS} authorized connections are established", established(p, c.rpc_port))
        log(f"  {established(p, c.rpc_port)} silent authorized connections; head has {harness.fd_count(head.pid)} fds")
        serves(head, "opening the silent connections")
        gone = harness.wait_until(lambda: established(p, c.rpc_port) == 0, REGISTER_TIMEOUT + 30 * slow_factor(), 0.2)
        check(gone, f"the head closed every connection that did not register within {REGISTER_TIMEOUT} s "
                    "(handshake.register_timeout)", established(p, c.rpc_port))
    finally:
        dealers.close()
    counted = refusal_counts(head).get("registration-timeout", 0) - before
    check(counted >= SILENT_CONNECTIONS, f"the head counts the {SILENT_CONNECTIONS} closed connections "
                                         "(registration-timeout)", refusal_counts(head))
    lines = lines_since(head, offset, "registration-timeout")
    log(f"  {len(lines)} log line(s) for registration-timeout: {lines[:1]}")
    check(1 <= len(lines) <= 3, "the closings are logged, in a line or a few", lines)
    check("handshake.register_timeout" in lines[0], "the line names handshake.register_timeout", lines[0])


def main() -> None:
    harness.raise_fd_limit(8192)
    with Network("hc") as net:
        a, b, p = net.add_nodes("head", "b", "p")
        with Cluster(net, "ipv4", handshake={"register_timeout": REGISTER_TIMEOUT}) as c:
            head = c.head(a, dp=2, dpl=1, authorized=[("node-b", "1-1"), ("node-p", None)],
                          env=harness.memory_check_env())
            node_b = c.headless(b, "node-b", dp=2, dpl=1, dpr=1)
            head.start()
            node_b.start()
            check(head.wait_ready_ranks(2, 30), "the head has 2 ready ranks", head.health())
            ranks = {**head.ranks(), **node_b.ranks()}
            serves(head, "start-up")
            baseline = Footprint(head.pid)
            log(f"  head baseline: {baseline}")

            key_flood(p, c, head)
            serves(head, "a flood of random keys")
            silent_connections(p, c, head)
            serves(head, "authorized connections that never registered")

            check_eq(head.health(), {"status": "ok", "ready_ranks": 2, "ranks": 2}, "/health at the end")
            check_eq({**head.ranks(), **node_b.ranks()}, ranks, "the same rank processes serve")
            check("connection-lost" not in head.log_text(), "no registered connection was closed",
                  harness.tail(head.log_text(), 1500))
            baseline.check_returned("after the floods", rss_slack=64 << 20)
            check_eq(head.stop(), 0, "the head stops cleanly")
            check_eq(node_b.stop(), 0, "node B stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=280)
