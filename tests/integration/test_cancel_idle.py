"""Issue 14, item 1: a cancelled request never gets its rank killed as hung.

(1) The synthetic backend with the default configuration but a short handshake.hang_timeout
    (the clock that declares a rank hung): 300 streaming clients that close their connection
    after the first event, some with n = 4, and 20 non-streamed clients that close theirs 50 ms
    after sending. The rank's load in /metrics (dpengine_rank_in_flight and
    dpengine_rank_queue_depth) returns to 0 promptly; over three hang timeouts after that the
    idle rank is not declared hung: no event is counted, the process is the same, it was not
    restarted, and it still answers.
(2) The head's hang clock runs on what it has in flight on a rank, not on the figures the rank
    reports: a scripted rank (python3-zmq, CURVE over TCP from another namespace, its key
    reserving rank 0 in the head's authorized_keys) whose heartbeats say
    running 2, waiting 1 with a progress counter that never moves (an engine whose figures
    lag, as they did after aborts) is not hung while the head has nothing in flight there;
    once a request is routed to it and it takes no step, it is declared hung within the
    timeout, and the client gets an error.
"""

import json
import socket
import threading
import time

import faults
import harness
from harness import HOST, Daemon, check, check_eq, log, run_test, slow_factor, wait_until
from netns import ERROR, HEARTBEAT, REFUSED, REQUEST, Cluster, Network, Peer

HANG_TIMEOUT = 3.0
STREAMS = 300
CANCELLED_PLAIN = 20


def post_bytes(body: dict) -> bytes:
    data = json.dumps(body).encode()
    return (b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(data)) + data


def stream_then_leave(port: int, i: int, seen: list) -> None:
    """A streaming client that reads its first event and closes the connection."""
    body = {"model": "synthetic", "prompt": f"stream {i}", "max_tokens": 8000, "stream": True,
            "n": 4 if i % 10 == 0 else 1}
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(post_bytes(body))
        got = b""
        while b"data:" not in got:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        if b"data:" in got:
            seen.append(i)


def send_then_leave(port: int, i: int) -> None:
    """A non-streamed client that closes its connection 50 ms after sending."""
    with socket.create_connection((HOST, port), timeout=30) as s:
        s.sendall(post_bytes({"model": "synthetic", "prompt": f"plain {i}", "max_tokens": 8000}))
        time.sleep(0.05)


def rank_figure(port: int, name: str, rank: int = 0):
    for n, labels, value in faults.metrics(port):
        if n == name and labels.get("rank") == str(rank):
            return value
    return None


def idle_after_cancels() -> None:
    log("--- (1) synthetic backend: cancelled requests leave the rank idle, never hung")
    with Daemon({"handshake": {"hang_timeout": HANG_TIMEOUT}}, name="cancel-idle") as d:
        d.wait_ready(30)
        pids = d.ranks()
        seen: list[int] = []
        for first in range(0, STREAMS, 50):
            threads = [threading.Thread(target=stream_then_leave, args=(d.port, i, seen))
                       for i in range(first, first + 50)]
            if first == 0:
                threads += [threading.Thread(target=send_then_leave, args=(d.port, i))
                            for i in range(CANCELLED_PLAIN)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
        check_eq(len(seen), STREAMS, "every streaming client got an event before it left")

        def idle():
            return (rank_figure(d.port, "dpengine_rank_in_flight") == 0 and
                    rank_figure(d.port, "dpengine_rank_queue_depth") == 0)
        check(wait_until(idle, 10 * slow_factor(), 0.1),
              "the rank's in-flight count and queue depth in /metrics return to 0",
              (rank_figure(d.port, "dpengine_rank_in_flight"), rank_figure(d.port, "dpengine_rank_queue_depth")))

        deadline = time.monotonic() + 3 * HANG_TIMEOUT
        while time.monotonic() < deadline:
            check(idle(), "the rank stays idle")
            events = faults.rank_events(d.port)
            check(not events, "no loss, hang or restart is counted", events)
            time.sleep(0.5)
        check(not d.wait_log(r"\[hung\]", 0.1), "the log declares no rank hung")
        check_eq(d.ranks(), pids, "the rank process is the same one")
        check_eq(rank_figure(d.port, "dpengine_rank_restarts_total"), 0.0, "dpengine_rank_restarts_total")
        status, body = harness.post_json(d.port, "/v1/completions",
                                         {"model": "synthetic", "prompt": "still there", "max_tokens": 3})
        check_eq(status, 200, "a completion after the cancels succeeds")
        check_eq(body["choices"][0]["text"], harness.synthetic_text("still there", 0, 3), "its text")
        check_eq(d.stop(), 0, "exit status after SIGTERM")


def hang_clock_follows_in_flight() -> None:
    log("--- (2) the hang clock runs on the head's requests in flight, not on the rank's figures")
    with Network("ci") as net:
        a, p = net.add_nodes("head", "p")
        # The default engine (model "synthetic", no step time), as in part (1).
        with Cluster(net, "ipv4", engine={"model": "synthetic", "step_time_ms": 0}) as c:
            head = c.head(a, dp=1, dpl=0, authorized=[("scripted", "0-0")],
                          config={"handshake": {"hang_timeout": HANG_TIMEOUT, "heartbeat_interval": 0.5,
                                                "heartbeat_timeout": 30.0}})
            head.start()
            with Peer(p, c.endpoint(), c.key("scripted"), c.key("head").public, name="lagging rank") as peer:
                lagging_rank(head, peer)
            check_eq(head.stop(), 0, "exit status after SIGTERM")


def lagging_rank(head, peer: Peer) -> None:
    """Rank 0 on `peer`, whose heartbeats report load that never moves and which never answers."""
    epoch = peer.join(0, 15 * slow_factor(), node="scripted")
    stop = threading.Event()
    requests: list = []

    def beat() -> None:
        # Figures that say "busy" with a counter that never moves, as a rank's stale load did.
        while not stop.is_set():
            peer.send(HEARTBEAT, {"progress": 7, "running": 2, "waiting": 1}, epoch)
            m = peer.recv(0.5)
            while m is not None:
                if m.type == REQUEST:
                    requests.append(m.body)  # never answered: the engine is stuck
                elif m.type in (REFUSED, ERROR):
                    return
                m = peer.recv(0)
    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        check(wait_until(lambda: faults.rank_states(head.port, head.ns).get(0) == "ready", 15 * slow_factor(), 0.1),
              "the scripted rank is ready", faults.rank_states(head.port, head.ns))
        time.sleep(3 * HANG_TIMEOUT)
        events = faults.rank_events(head.port, head.ns)
        check(not events, "with nothing in flight the rank is not hung, whatever its figures say", events)
        check_eq(faults.rank_states(head.port, head.ns).get(0), "ready", "it is still ready")

        result: dict = {}

        def ask() -> None:
            result["response"] = head.request("POST", "/v1/completions",
                                              {"model": "synthetic", "prompt": "stuck", "max_tokens": 2},
                                              timeout=60)
        client = threading.Thread(target=ask, daemon=True)
        client.start()
        check(faults.wait_event(head.port, 0, "hung", 1, 4 * HANG_TIMEOUT, ns=head.ns),
              "with a request in flight and no step, the rank is declared hung",
              faults.rank_events(head.port, head.ns))
        client.join(30)
        check(len(requests) >= 1, "the request reached the scripted rank")
        response = result.get("response")
        check(response is not None and response.status >= 500, "the client got an error",
              response and (response.status, response.body[:200]))
    finally:
        stop.set()
        beater.join(5)


def main() -> None:
    idle_after_cancels()
    hang_clock_follows_in_flight()


if __name__ == "__main__":
    run_test(main, timeout=240)
