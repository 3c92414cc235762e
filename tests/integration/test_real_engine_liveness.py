"""Liveness with a real engine: DP=2 on one node, engine.backend = "http", each rank running
llama-cpp-python's server (tests/integration/llamaserver.py) on a tiny model the test writes,
probed on its lock-free liveness path (/docs) every second.

Part 1, cancel: 50 streamed chats of 800 tokens (~2 s of generation each, so that a machine
busy with other work cannot finish them before the test has seen them start; the server gets
--n_ctx 1024 for that, and min_tokens keeps any from ending early). The server generates one at a time, so with engine.max_concurrency =
8 each rank has 8 on its server (one generating, seven waiting for the model lock, already
answered 200 by the server but with no event yet, so the head has sent the client nothing)
and 17 in its own queue. Once the head has routed all 50, both ranks report requests in
their queues and some stream is producing events, the test closes all 50 client
connections. Checks: the head's view of each rank's load (dpengine_rank_in_flight,
dpengine_rank_queue_depth) is back to 0 within 2 s; the rank closes every connection that
carried one of the requests (ESTABLISHED TCP connections from the rank process to its
server's port, from the kernel's sock_diag as `ss` reads it, matched against the rank's own
socket inodes: 0, or, where the rank keeps idle keep-alive connections, only idle ones
left); the servers stop generating (their CPU falls to nearly nothing, though they had
seconds of work queued) and log "Disconnected from client"; no rank was declared hung or lost (no "hung", "heartbeat-timeout",
"rank-exited", "connection-lost" events, no "is hung" in the log); fresh requests, plain and
streamed, succeed.

Part 2, SIGSTOP: the test stops rank 1's server (its whole process group) while a steady
series of plain chats (one started every 100 ms, each on its own connection) runs. Checks:
within health_interval x (health_failures + 1) = 4 s the head takes rank 1 out of routing:
/health counts one ready rank and lists rank 1 as unhealthy in "missing",
dpengine_rank_state says "unhealthy", and so do `dpctl status --json` and `dpctl status`
(against the daemon on a private system bus); every request started once that was seen
succeeds, and rank 1 gets no new requests; some requests were routed to rank 1 after the stop
and before it was noticed: they end, relayed, retried or with dpengine's clear 502/503 error,
within the bound plus 2 s. After health_failures failed probes the rank ends
("backend-unhealthy"), the head counts it lost within the bound plus 2 s, the stopped server
is gone (no stopped process left), the supervisor restarts the rank with a new server, it is
ready again, and requests are served by both ranks.

Every wait is bounded and scaled with slow_factor(); the stopped server's process group gets
SIGCONT in cleanup whatever happens.
"""

import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time

import llamaserver
from busharness import SystemBus, dpctl, dpctl_json, rank_by_number, wait_for_name
from faults import health, metrics, rank_events, rank_states
from harness import (Daemon, check, check_eq, check_log_clean, cpu_ns, expect, log, pid_alive, post_json, proc_stat,
                     processes_tagged, run_test, slow_factor, socket_inodes, stream_sse_full, wait_until)
from httpbackend import backend_servers, server_port

DP = 2
HEARTBEAT = 0.25
HEALTH_INTERVAL = 1.0
HEALTH_FAILURES = 3
BOUND = HEALTH_INTERVAL * (HEALTH_FAILURES + 1)  # a stopped server is detected within this
MAX_CONCURRENCY = 8
STREAMS = 50
STREAM_TOKENS = 800
N_CTX = 1024  # room for STREAM_TOKENS (llamaserver's default is the tiny model's 256)
LOSS_EVENTS = ("hung", "heartbeat-timeout", "rank-exited", "connection-lost")
SERVER_PROGRAM = os.path.basename(llamaserver.venv_python())


def chat(content: str, max_tokens: int, stream: bool) -> dict:
    return {"model": llamaserver.MODEL_ALIAS, "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens, "temperature": 0, "stream": stream}


def metric_values(port: int) -> dict:
    """Per-rank figures of the head's /metrics: {"in_flight": {rank: n}, "queue": {...}, "served": {...}}."""
    out = {"in_flight": {}, "queue": {}, "served": {}}
    names = {"dpengine_rank_in_flight": "in_flight", "dpengine_rank_queue_depth": "queue",
             "dpengine_rank_requests_total": "served"}
    for name, labels, value in metrics(port):
        if name in names:
            out[names[name]][int(labels["rank"])] = int(value)
    return out


# sock_diag (netlink), as `ss` asks the kernel: linux/sock_diag.h, linux/inet_diag.h
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, INET_DIAG_INFO = 4, 20, 2
NLM_F_REQUEST, NLM_F_DUMP, NLMSG_ERROR, NLMSG_DONE = 1, 0x300, 2, 3
TCP_ESTABLISHED = 1
TCPI_BYTES_RECEIVED = 128  # offset of tcpi_bytes_received in struct tcp_info


def established_to(port: int) -> dict[str, int]:
    """Every ESTABLISHED IPv4 TCP socket of this network namespace whose peer port is `port`,
    as {socket inode: bytes received on it}. The kernel filters by state (a dump of the
    thousands of TIME_WAIT entries the probes leave, as /proc/net/tcp gives them, or a
    subprocess per poll, took up to seconds on a busy machine)."""
    out: dict[str, int] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        # struct inet_diag_req_v2: family, protocol, ext (tcp_info), pad, states, sockid (any)
        req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0,
                          1 << TCP_ESTABLISHED) + bytes(48)
        s.settimeout(10)
        s.sendall(struct.pack("=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
        while True:
            data = s.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, off)
                if kind == NLMSG_DONE:
                    return out
                if kind == NLMSG_ERROR:
                    raise OSError(-struct.unpack_from("=i", data, off + 16)[0], "sock_diag dump failed")
                msg = off + 16  # struct inet_diag_msg: dport at 6 (big-endian), inode at 68, attributes from 72
                if struct.unpack_from(">H", data, msg + 6)[0] == port:
                    received, a = 0, msg + 72
                    while a + 4 <= off + length:
                        alen, atype = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        if atype == INET_DIAG_INFO and alen - 4 >= TCPI_BYTES_RECEIVED + 8:
                            received = struct.unpack_from("=Q", data, a + 4 + TCPI_BYTES_RECEIVED)[0]
                        a += (alen + 3) & ~3
                    out[str(struct.unpack_from("=I", data, msg + 68)[0])] = received
                off += (length + 3) & ~3
            if not data:
                raise OSError("sock_diag dump ended early")


def upstream_connections(rank_pid: int, port: int) -> dict[str, int]:
    """The rank process's ESTABLISHED TCP connections to 127.0.0.1:`port` (its server's), as
    {socket inode: bytes received}: those of established_to() that are the rank's own sockets
    (/proc/<pid>/fd)."""
    inodes = {s[len("socket:["):-1] for s in socket_inodes(rank_pid)}
    return {i: n for i, n in established_to(port).items() if i in inodes}


def idle_connections(rank_pid: int, port: int, window: float = 0.3) -> tuple[dict[str, int], set[str]]:
    """The rank's connections to its server now, and those of them that were open `window`
    s ago too and received nothing since (open but idle: kept for the next request)."""
    before = upstream_connections(rank_pid, port)
    time.sleep(window)
    now = upstream_connections(rank_pid, port)
    return now, {i for i, n in now.items() if before.get(i) == n}


class RawStreams:
    """Streamed requests on raw sockets (so the test decides when a connection goes), read by
    one thread: what each has received so far."""

    def __init__(self, port: int, bodies: list[dict], path: str = "/v1/chat/completions"):
        self.sel = selectors.DefaultSelector()
        self.data = [b""] * len(bodies)
        self.socks = []
        self.lock = threading.Lock()
        self.stopping = False
        for i, body in enumerate(bodies):
            payload = json.dumps(body).encode()
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Accept: text/event-stream\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            s.setblocking(False)
            self.socks.append(s)
            self.sel.register(s, selectors.EVENT_READ, i)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopping:
            for key, _ in self.sel.select(0.05):
                i = key.data
                try:
                    chunk = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    self.sel.unregister(key.fileobj)
                    continue
                with self.lock:
                    self.data[i] += chunk

    def snapshot(self) -> list[bytes]:
        with self.lock:
            return list(self.data)

    def started(self) -> list[int]:
        """Streams that received at least one event."""
        return [i for i, d in enumerate(self.snapshot()) if b"\r\n\r\n" in d and b"data:" in d.split(b"\r\n\r\n", 1)[1]]

    def done(self) -> list[int]:
        return [i for i, d in enumerate(self.snapshot()) if b"data: [DONE]" in d]

    def close_all(self) -> None:
        self.stopping = True
        self.thread.join(2)
        for s in self.socks:
            with contextlib.suppress(OSError):
                s.close()
        self.sel.close()


class SteadyLoad:
    """Starts one plain chat every `every` s, each on its own thread and connection with
    client timeout `timeout`, until stop(); records (start, end, status, body or error)."""

    def __init__(self, port: int, every: float, timeout: float):
        self.port, self.every, self.timeout = port, every, timeout
        self.results: list[dict] = []
        self.lock = threading.Lock()
        self.stop_flag = threading.Event()
        self.threads: list[threading.Thread] = []
        self.runner = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "SteadyLoad":
        self.runner.start()
        return self

    def _one(self, i: int) -> None:
        r = {"i": i, "start": time.monotonic(), "end": None, "status": None, "body": None, "error": None}
        with self.lock:
            self.results.append(r)
        try:
            r["status"], r["body"] = post_json(self.port, "/v1/chat/completions", chat(f"steady request {i}", 8, False),
                                               timeout=self.timeout)
        except Exception as e:  # noqa: BLE001 - judged later
            r["error"] = f"{type(e).__name__}: {e}"
        r["end"] = time.monotonic()

    def _run(self) -> None:
        i = 0
        while not self.stop_flag.is_set():
            t = threading.Thread(target=self._one, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)
            i += 1
            self.stop_flag.wait(self.every)

    def stop(self) -> list[dict]:
        self.stop_flag.set()
        self.runner.join(5)
        for t in self.threads:
            t.join(self.timeout + 5)
        with self.lock:
            return list(self.results)


def succeeded(r: dict) -> bool:
    body = r["body"]
    if r["status"] != 200 or not isinstance(body, dict):
        return False
    choice = (body.get("choices") or [{}])[0]
    return isinstance((choice.get("message") or {}).get("content"), str) and choice.get("finish_reason") in ("length", "stop")


def clear_error(r: dict) -> bool:
    """dpengine's own clear error: 502 (rank lost) or 503 (no ready rank), OpenAI-style."""
    body = r["body"]
    err = body.get("error") if isinstance(body, dict) else None
    return r["status"] in (502, 503) and isinstance(err, dict) and isinstance(err.get("message"), str) and bool(err.get("code"))


def fresh_requests(d: Daemon, what: str, n: int = 4) -> None:
    """`n` requests one after another, every second one streamed: each succeeds."""
    for i in range(n):
        if i % 2:
            s = stream_sse_full(d.port, "/v1/chat/completions", chat(f"{what} {i}", 16, True), timeout=20 * slow_factor())
            ok = s.status == 200 and s.done and not s.error and len(s.events) > 3
            check(ok, f"{what}: streamed chat {i} succeeds ({len(s.events)} events)", (s.status, s.error, s.events[-2:]))
        else:
            status, body = post_json(d.port, "/v1/chat/completions", chat(f"{what} {i}", 16, False), timeout=20 * slow_factor())
            check(succeeded({"status": status, "body": body}), f"{what}: chat {i} succeeds", (status, body))


def no_losses(d: Daemon, what: str) -> None:
    events = rank_events(d.port)
    bad = {k: v for k, v in events.items() if k[1] in LOSS_EVENTS}
    check(not bad, f"{what}: no rank was declared hung or lost", events)
    check("is hung" not in d.log_text(), f"{what}: the daemon's log has no 'is hung'")


def part_cancel(d: Daemon, servers: dict[int, int], ports: dict[int, int]) -> None:
    log("-- part 1: 50 streams, then every client goes away")
    ranks = d.ranks()
    # Does the rank keep a connection open once its request is done (HTTP keep-alive)? Then
    # such idle ones may stay; every connection that carried a cancelled request must go.
    kept = {r: idle_connections(ranks[r], ports[r])[1] for r in range(DP)}
    pooling = any(kept.values())
    log(f"  the ranks {'keep' if pooling else 'do not keep'} idle connections to their servers: {kept}")
    # min_tokens (llama-cpp-python's): no stream ends early at an end-of-text token, so every
    # one takes its full ~2 s and a rank's 25 take about a minute, one after the other.
    bodies = [chat(f"cancelled story number {i}", STREAM_TOKENS, True) | {"min_tokens": STREAM_TOKENS}
              for i in range(STREAMS)]
    disconnects_before = d.log_text().count("Disconnected from client")
    polls = []
    sent_at = time.monotonic()
    streams = RawStreams(d.port, bodies)
    sent_in = time.monotonic() - sent_at
    try:
        # Streams waiting in a server or a rank's queue have no event yet (the head sends the
        # status with the first one): wait until the head has routed all 50, each rank
        # reports requests in its own queue (so it has max_concurrency on its server) and
        # some stream is producing events. Only the head's /metrics is asked meanwhile: on a
        # busy machine even a sock_diag dump could take seconds, and the close must follow.
        def all_accepted():
            t0 = time.monotonic()
            # (finished ones first: a stream counted here has left the head's in-flight count)
            done = len(streams.done())
            started = len(streams.started())
            m = metric_values(d.port)
            routed = sum(m["in_flight"].values()) + done == STREAMS
            queued = all(m["queue"].get(r, 0) > 0 for r in range(DP))
            polls.append((round(t0 - sent_at, 2), round(time.monotonic() - t0, 2), m["in_flight"], m["queue"],
                          started, done))
            return (m, done) if routed and queued and started > done else None

        got = wait_until(all_accepted, 15 * slow_factor(), 0.02)
        check(got, "all 50 streams were routed, requests wait in each rank's queue and the servers are generating",
              f"(sent in {sent_in:.2f} s; polls: s, taking s, in flight, queued, with events, finished):\n"
              + "\n".join(map(str, polls[:10] + ["..."] + polls[-3:])))
        m, done = got
        log(f"  {time.monotonic() - sent_at:.2f} s after the first request (sent in {sent_in:.2f} s, {len(polls)} "
            f"polls): in flight {m['in_flight']}, queued in the ranks {m['queue']}, streams with events "
            f"{len(streams.started())}, finished {done}")
        # (a machine busy with other work may have held this process back for seconds while the
        # servers went on: require only that each rank has a good part of its 25 left)
        check(all(m["in_flight"][r] >= 5 for r in range(DP)), "each rank still has streams going when the clients leave",
              m["in_flight"])
    finally:
        close_started = time.monotonic()
        streams.close_all()
        closed_at = time.monotonic()
    log(f"  closed all {STREAMS} client connections (in {closed_at - close_started:.2f} s)")

    def head_idle():
        m = metric_values(d.port)
        return m if all(m[k].get(r) == 0 for k in ("in_flight", "queue") for r in range(DP)) else None
    idle = wait_until(head_idle, 2 * slow_factor(), 0.02)
    check(idle, "the head's load of each rank (in flight, queue depth) is back to 0 within 2 s", metric_values(d.port))
    log(f"  head's load at 0 after {time.monotonic() - closed_at:.2f} s: {idle['in_flight']} {idle['queue']}")

    if not pooling:
        gone = wait_until(lambda: all(not upstream_connections(ranks[r], ports[r]) for r in range(DP)),
                          10 * slow_factor(), 0.02)
        check(gone, "every connection from the ranks to their servers is closed (ESTABLISHED ones: 0)",
              {r: upstream_connections(ranks[r], ports[r]) for r in range(DP)})
    else:
        # Under load every open connection carries a request (a queued one takes an idle one
        # at once); only a stream that ended just before the close may have left its
        # connection idle. The rest must be closed, and whatever is left must be idle.
        def cancelled():
            state = {r: idle_connections(ranks[r], ports[r]) for r in range(DP)}
            return state if all(len(now) <= 1 and set(now) == idle for now, idle in state.values()) else None
        gone = wait_until(cancelled, 10 * slow_factor(), 0.02)
        check(gone, "every connection that carried a cancelled request is closed (at most one idle one is left)",
              {r: idle_connections(ranks[r], ports[r]) for r in range(DP)})
    log(f"  connections to the servers after {time.monotonic() - closed_at:.2f} s: "
        f"{ {r: len(upstream_connections(ranks[r], ports[r])) for r in range(DP)} } (max_concurrency = {MAX_CONCURRENCY} each while the ranks had a queue)")

    # The servers stopped generating: they had seconds of work left, and a generating server
    # takes a core; now they use next to nothing (a liveness probe a second).
    time.sleep(0.3)
    cpu_mid, t_mid = {r: cpu_ns(servers[r]) for r in range(DP)}, time.monotonic()
    time.sleep(1.0)
    elapsed = time.monotonic() - t_mid
    share = {r: round((cpu_ns(servers[r]) - cpu_mid[r]) / 1e9 / elapsed, 3) for r in range(DP)}
    check(all(v < 0.05 for v in share.values()), f"the servers stopped generating (share of a core they use now: "
          f"{share})", share)
    per_rank = {r: d.log_text().count(f"[rank {r} server] Disconnected from client") for r in range(DP)}
    disconnects = d.log_text().count("Disconnected from client") - disconnects_before
    # (only a stream that has the model prints it; those waiting for its lock are cancelled
    # by sse-starlette before they print anything)
    check(disconnects >= 1, "the servers logged 'Disconnected from client' for the streams they were generating",
          per_rank)
    log(f"  'Disconnected from client' lines per rank: {per_rank}")
    no_losses(d, "after the cancel")
    check(d.running() and backend_servers(d, SERVER_PROGRAM) == servers, "the same ranks and servers still run")
    fresh_requests(d, "after the cancel")


class Monitor:
    """Polls the head's /health and /metrics every 50 ms from its own thread: a timeline."""

    def __init__(self, port: int):
        self.port = port
        self.samples: list[tuple[float, dict, dict, dict]] = []  # (t, /health, states, in flight)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_flag.is_set():
            h = health(self.port) or {}
            t = time.monotonic()  # the state /health showed held by now
            try:
                states = rank_states(self.port)
                in_flight = metric_values(self.port)["in_flight"]
            except Exception:  # noqa: BLE001 - a missed sample
                states, in_flight = {}, {}
            self.samples.append((t, h, states, in_flight))
            self.stop_flag.wait(0.05)

    def first(self, pred, since: float = 0.0):
        for s in list(self.samples):
            if s[0] >= since and pred(s):
                return s
        return None

    def stop(self) -> None:
        self.stop_flag.set()
        self.thread.join(5)


def rank1_out(sample) -> bool:
    _, h, states, _ = sample
    missing = " ".join(h.get("missing") or [])
    return h.get("ready_ranks") == 1 and "rank 1 (" in missing and states.get(1) not in (None, "ready")


def part_sigstop(d: Daemon, bus: SystemBus, servers: dict[int, int]) -> None:
    log("-- part 2: SIGSTOP of rank 1's server under a steady load")
    victim = servers[1]
    check_eq(proc_stat(victim).pgrp, victim, "rank 1's server leads its own process group")
    old_rank1 = d.ranks()[1]
    mon = Monitor(d.port)
    load = SteadyLoad(d.port, 0.1, timeout=(BOUND + 8) * slow_factor())
    try:
        load.start()
        time.sleep(1.0)
        stopped_at = time.monotonic()
        os.killpg(victim, signal.SIGSTOP)
        log(f"  SIGSTOP -> process group {victim} (rank 1's server)")
        seen = wait_until(lambda: mon.first(rank1_out, stopped_at), BOUND * slow_factor(), 0.02)
        check(seen, f"within {BOUND:.0f} s (health_interval x (health_failures + 1)) rank 1 leaves routing",
              mon.samples[-1][1:3] if mon.samples else None)
        seen_at, h, states, in_flight_then = seen
        log(f"  rank 1 out of routing {seen_at - stopped_at:.2f} s after the stop: {h}, states {states}")
        check(states.get(1) == "unhealthy", "dpengine_rank_state says rank 1 is unhealthy", states)
        check(any(m.startswith("rank 1 (unhealthy") for m in h.get("missing", [])),
              "/health lists rank 1 as unhealthy in 'missing'", h)
        check(h.get("ready_ranks") == 1, "/health counts one ready rank", h)
        st = dpctl_json(bus, "status")
        r1 = rank_by_number(st).get(1, {})
        check(r1.get("state") == "unhealthy" and st.get("ready_ranks") == 1,
              "dpctl status --json: rank 1 unhealthy, one rank ready", st)
        text = dpctl(bus, "status").stdout
        row = next((l for l in text.splitlines() if l.split()[:1] == ["1"]), "")
        check("unhealthy" in row and "Ready ranks: 1/2" in text, "dpctl status shows rank 1 unhealthy", text)

        # The rank ends after health_failures failed probes and is restarted.
        check(d.wait_log(rf"(?m)^rank 1: error: the backend server \(pid {victim}\) failed {HEALTH_FAILURES} health "
                         r"checks in a row; .*\(backend-unhealthy\)$", BOUND + 2),
              "rank 1 ends: backend-unhealthy")
        lost = wait_until(lambda: mon.first(lambda s: s[2].get(1) in ("failed", "starting", "connecting",
                                                                      "initializing"), stopped_at), 15 * slow_factor(), 0.05)
        check(lost, "the head counts rank 1 lost", mon.samples[-1][1:3])
        log(f"  rank 1 lost {lost[0] - stopped_at:.2f} s after the stop ({lost[2]})")
        expect(lost[0] - stopped_at <= (BOUND + 2) * slow_factor(), "rank 1 is lost within the bound + 2 s",
               f"{lost[0] - stopped_at:.2f} s")
        check(wait_until(lambda: not pid_alive(victim), 10 * slow_factor(), 0.05), "the stopped server is gone")
        stopped_left = [p for p in processes_tagged(d.tag) if (st := proc_stat(p)) is not None and st.state == "T"]
        check(not stopped_left, "no stopped process is left", stopped_left)
        back = wait_until(lambda: (health(d.port) or {}).get("ready_ranks") == 2, 40 * slow_factor(), 0.1)
        back_at = time.monotonic()
        check(back, "rank 1 is restarted and ready again", health(d.port))
        log(f"  both ranks ready {back_at - stopped_at:.2f} s after the stop")
        time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(victim, signal.SIGCONT)
        results = load.stop()
        mon.stop()

    # The requests during the stop.
    failed = [r for r in results if not succeeded(r)]
    log(f"  steady load: {len(results)} requests, {len(results) - len(failed)} succeeded; "
        f"not: {[(r['i'], r['status'], r['error'] or r['body']) for r in failed][:5]}")
    check(all(r["end"] is not None for r in results), "every request of the steady load ended")
    after_seen = [r for r in results if r["start"] >= seen_at]
    late = [r for r in after_seen if not succeeded(r)]
    check(after_seen and not late, f"every request started once rank 1 was out of routing succeeded "
          f"({len(after_seen)})", [(r["i"], r["status"], r["error"] or r["body"]) for r in late][:5])
    slowest = max(r["end"] - r["start"] for r in after_seen)
    log(f"  the slowest of them took {slowest:.2f} s")
    before = [r for r in results if r["start"] < seen_at]
    unclear = [r for r in before if not (succeeded(r) or clear_error(r))]
    check(not unclear, "requests started before it was out of routing completed or got a clear 502/503",
          [(r["i"], r["status"], r["error"] or r["body"]) for r in unclear][:5])
    ends = [r["end"] - stopped_at for r in before if r["end"] > seen_at]
    latest = max(ends) if ends else 0.0
    expect(latest <= (BOUND + 2) * slow_factor(),
           f"requests that were routed to rank 1 before the stop was noticed ended within the bound + 2 s "
           f"({len(ends)} ended after it was noticed, the last {latest:.2f} s after the stop)",
           sorted(round(e, 2) for e in ends))
    stuck_on_1 = max((s[3].get(1, 0) for s in mon.samples if stopped_at <= s[0] < seen_at), default=0)
    after_out = [s[3].get(1, 0) for s in mon.samples if seen_at <= s[0] and s[2].get(1) == "unhealthy"]
    log(f"  in flight on rank 1 while stopped: up to {stuck_on_1} before it left routing, {after_out[:3]}... after")
    check(stuck_on_1 >= 1, "some requests were routed to rank 1 after the stop, before it left routing", stuck_on_1)
    check(all(v <= in_flight_then.get(1, 0) for v in after_out), "rank 1 got no new requests while unhealthy",
          (in_flight_then, after_out))

    # Rank 1 ended with backend-unhealthy and was restarted with a new server.
    text = d.log_text()
    check("backend-unhealthy" in text, "'backend-unhealthy' is in the daemon's log")
    events = rank_events(d.port)
    log(f"  rank events: {events}")
    check(events.get((1, "engine-unhealthy"), 0) >= 1, "an engine-unhealthy event for rank 1", events)
    check(not any(k[0] == 0 and k[1] in LOSS_EVENTS for k in events), "rank 0 was never lost", events)
    check(not any(k[1] in ("hung", "heartbeat-timeout") for k in events), "no rank was declared hung or silent", events)
    check("is hung" not in text, "the daemon's log has no 'is hung'")
    new_servers = backend_servers(d, SERVER_PROGRAM)
    check(sorted(new_servers) == [0, 1] and new_servers[1] != victim and new_servers[0] == servers[0],
          "rank 1 runs a new server, rank 0 the same one", (servers, new_servers))
    check(d.ranks()[1] != old_rank1, "rank 1 is a new process")

    # Traffic on both ranks again.
    served_before = metric_values(d.port)["served"]
    fresh_requests(d, "after the restart", 6)
    served = metric_values(d.port)["served"]
    check(all(served[r] > served_before.get(r, 0) for r in range(DP)), "both ranks serve requests again",
          (served_before, served))


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="dpe-liveness-")
    try:
        model = llamaserver.write_model(os.path.join(tmp, "tiny.gguf"))
        engine = {"backend": "http", "command": llamaserver.server_command(model, "{port}") + ["--n_ctx", str(N_CTX)],
                  "model": llamaserver.MODEL_ALIAS, "health_path": llamaserver.LIVENESS_PATH,
                  "health_interval": HEALTH_INTERVAL, "health_failures": HEALTH_FAILURES,
                  "max_concurrency": MAX_CONCURRENCY, "ready_timeout": 60.0,
                  # print() lines ("Disconnected from client") reach the log at once.
                  "env": {"PYTHONUNBUFFERED": "1"}}
        config = {"data_parallel": {"size": DP}, "engine": engine,
                  "handshake": {"heartbeat_interval": HEARTBEAT, "heartbeat_timeout": 3.0},
                  "supervision": {"restart_backoff": 0.2}}
        with SystemBus() as bus, Daemon(config, env=bus.env, name="liveness") as d:
            d.wait_ready(60)
            check(wait_for_name(bus, 10), "org.dpengine1 is on the private bus")
            servers = backend_servers(d, SERVER_PROGRAM)
            check_eq(sorted(servers), list(range(DP)), "a llama server per rank")
            ports = {r: server_port(pid) for r, pid in servers.items()}
            fresh_requests(d, "warm-up", 2)
            part_cancel(d, servers, ports)
            part_sigstop(d, bus, servers)
            check_log_clean(d)
            check_eq(d.stop(signal.SIGTERM, 30), 0, "exit status after SIGTERM")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    llamaserver.require_venv()
    run_test(main, timeout=120)
