"""Fault injection and request accounting for dpengine's fault-tolerance tests (test_fault_*.py)
and bench/recovery.

  - Load:      steady client load (N concurrent clients, half of them streaming unless
               streams=False), every request with a unique prompt, each answer checked
               against the synthetic backend's oracle. Accounting: every request ends exactly
               one way: "ok" (the right text, nothing repeated or missing), "error" (a clear
               error: an HTTP error status with an OpenAI error body, or an SSE error event
               followed by [DONE]), "bad" (wrong or duplicated text, truncation without an
               error, a transport failure) or "hung" (no end within the client timeout). A
               test wants no "bad" and no "hung". When the test kills or stops the server
               process itself, requests whose connection was open during that outage
               (Load.outage()) and broke are "cut": no server can answer them.
  - Signals:   signal_pid() for SIGKILL/SIGSTOP/SIGCONT to a rank or a daemon, and
               signal_namespace() for every process of a node's namespace.
  - Metrics:   metrics() parses the head's /metrics; rank_events() reads
               dpengine_rank_events_total by rank and reason.
  - Waits:     wait_ready_ranks() on /health, from a namespace or loopback.
  - Set-ups:   local_config() (DP=2 on one node, fast heartbeats, quick restarts);
               two_nodes()/start_two_nodes()/two_node_cluster() (the head with rank 0 and
               headless node B with rank 1, in two namespaces).
  - Calls:     single requests on their own threads, each judged by itself (Call), for tests
               that must know what happened to each request in flight at a fault: a rank
               killed under a fixed mix of requests (start_kill_mix, RankLossCall), a daemon
               stopped with requests in flight (test_shutdown).

Loss on a link is modelled by netns.TcpDelayProxy(loss=...): TCP hides lost segments from the
application as a retransmission delay, so a "lost" chunk is held back for `loss_penalty`
seconds (200 ms, the minimum retransmission timeout of Linux) before it is relayed, in order.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import harness
import netns
from harness import (chat_prompt, check, log, post_json, slow_factor, stream_errors, stream_finish_reason,
                     stream_sse_full, stream_text, synthetic_completion, wait_until)


def default_clients() -> int:
    """~50 concurrent streams in a plain build, fewer under the sanitizers."""
    return 50 if not harness.is_sanitized_build() else 16


# ---------------------------------------------------------------------------------------------
# Load with accounting


@dataclass
class Outcome:
    request: int
    stream: bool
    kind: str  # ok | error | bad | hung | cut
    detail: str = ""
    started: float = 0.0
    ended: float = 0.0


@dataclass
class LoadReport:
    outcomes: list = field(default_factory=list)

    def by_kind(self, kind: str) -> list:
        return [o for o in self.outcomes if o.kind == kind]

    def counts(self) -> dict:
        out = {"ok": 0, "error": 0, "bad": 0, "hung": 0, "cut": 0}
        for o in self.outcomes:
            out[o.kind] += 1
        return out

    def duplicates(self) -> list:
        seen, dup = set(), []
        for o in self.outcomes:
            if o.request in seen:
                dup.append(o.request)
            seen.add(o.request)
        return dup

    def _listed(self, kinds: tuple) -> list[str]:
        out = [f"request {o.request} ({'stream' if o.stream else 'plain'}): {o.kind}: {o.detail}"
               for o in self.outcomes if o.kind in kinds]
        out += [f"request {r} answered twice" for r in self.duplicates()]
        return out

    def problems(self) -> list[str]:
        """Requests that neither completed nor got a clear error, or were answered twice."""
        return self._listed(("bad", "hung"))

    def failures(self) -> list[str]:
        """Every request that did not complete correctly, clear errors included."""
        return self._listed(("error", "bad", "hung", "cut"))

    def errors_sample(self, n: int = 3) -> list[str]:
        return [o.detail for o in self.by_kind("error")[:n]]

    def ok_after(self, t: float) -> int:
        return sum(1 for o in self.outcomes if o.kind == "ok" and o.started >= t)


class Load:
    """`clients` threads, each sending one completion after another to `port` (from inside
    `ns` when given) until stop(). Requests alternate streaming and not (all plain with
    streams=False); each has a unique prompt and seed, so its right answer is known."""

    def __init__(self, port: int, clients: Optional[int] = None, max_tokens: int = 24, ns=None,
                 client_timeout: float = 60.0, pause: float = 0.0, streams: bool = True):
        self.port = port
        self.clients = clients or default_clients()
        self.max_tokens = max_tokens
        self.ns = ns
        self.streams = streams
        self.client_timeout = client_timeout * slow_factor()
        self.pause = pause
        self.report = LoadReport()
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True, name=f"load-{i}")
                         for i in range(self.clients)]
        self._open: dict[int, float] = {}  # requests under way → start time
        self._outages: list[list[float]] = []  # [start, end] of server outages the test caused

    def outage(self, start: bool = True) -> None:
        """Marks the start (or end) of an outage of the server process the test caused."""
        with self._lock:
            if start:
                self._outages.append([time.monotonic(), float("inf")])
            elif self._outages:
                self._outages[-1][1] = time.monotonic()

    def _in_outage(self, started: float, ended: float) -> bool:
        return any(started <= end and ended >= start for start, end in self._outages)

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __enter__(self) -> "Load":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout: Optional[float] = None) -> LoadReport:
        """Stops sending new requests and waits for the ones under way (bounded: those still
        open after the client timeout are counted as hung)."""
        self._stop.set()
        deadline = time.monotonic() + (timeout or self.client_timeout + 10)
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        with self._lock:
            for rid, started in self._open.items():
                self.report.outcomes.append(Outcome(rid, False, "hung", "still open when the load stopped", started))
            self._open.clear()
        return self.report

    def completed_ok(self) -> int:
        with self._lock:
            return sum(1 for o in self.report.outcomes if o.kind == "ok")

    def wait_ok(self, n: int, timeout: float) -> bool:
        """Waits until `n` more requests completed correctly (the service works)."""
        target = self.completed_ok() + n
        return wait_until(lambda: self.completed_ok() >= target, timeout * slow_factor(), 0.05) is not None

    def _client(self, index: int) -> None:
        if self.ns is not None:
            with self.ns.entered():
                self._loop(index)
        else:
            self._loop(index)

    def _loop(self, index: int) -> None:
        while not self._stop.is_set():
            rid = next(self._ids)
            started = time.monotonic()
            with self._lock:
                self._open[rid] = started
            outcome = self._one(rid, self.streams and rid % 2 == 1)
            outcome.started, outcome.ended = started, time.monotonic()
            with self._lock:
                if outcome.kind == "bad" and outcome.detail.startswith("transport") and \
                        self._in_outage(outcome.started, outcome.ended):
                    outcome.kind = "cut"
                self._open.pop(rid, None)
                self.report.outcomes.append(outcome)
            if self.pause:
                time.sleep(self.pause)
            elif outcome.kind == "cut":
                time.sleep(0.05)  # the server is down: do not spin on refused connections

    def _one(self, rid: int, stream: bool) -> Outcome:
        prompt = f"fault load request {rid} pid {os.getpid()}"
        want = synthetic_completion(prompt, rid, self.max_tokens)
        body = {"prompt": prompt, "max_tokens": self.max_tokens, "seed": rid, "stream": stream}
        if stream:
            s = stream_sse_full(self.port, "/v1/completions", body, timeout=self.client_timeout)
            if s.error:
                kind = "hung" if "did not end" in s.error or "timed out" in s.error else "bad"
                return Outcome(rid, True, kind, f"transport: {s.error}")
            if s.status != 200:
                return _judge_error(rid, True, s.status, s.events[0] if s.events else None)
            if not s.done:
                # The connection closed early: a broken transport, unless the server was killed.
                return Outcome(rid, True, "bad", f"transport: the stream ended without [DONE]: {s.events[-3:]}")
            errors = stream_errors(s.events)
            text = stream_text(s.events)
            if errors:
                # Output already sent stays valid: what came before the error is a prefix.
                if len(errors) == 1 and s.events[-2] == {"error": errors[0]} and want.text.startswith(text) \
                        and errors[0].get("code") and errors[0].get("message"):
                    return Outcome(rid, True, "error", f"{errors[0]['code']}: {errors[0]['message']}")
                return Outcome(rid, True, "bad", f"error events {errors}; text {text!r}")
            if text == want.text and stream_finish_reason(s.events) == want.finish_reason:
                return Outcome(rid, True, "ok")
            return Outcome(rid, True, "bad", f"text {text!r} != {want.text!r} (duplicated or lost output)")
        try:
            status, r = harness.post_json(self.port, "/v1/completions", body, timeout=self.client_timeout)
        except TimeoutError as e:
            return Outcome(rid, False, "hung", f"{type(e).__name__}: {e}")
        except (OSError, http.client.HTTPException) as e:
            return Outcome(rid, False, "bad", f"transport: {type(e).__name__}: {e}")
        if status != 200:
            return _judge_error(rid, False, status, r)
        try:
            c = r["choices"][0]
            got = (c["text"], c["finish_reason"], r["usage"]["completion_tokens"])
        except (KeyError, IndexError, TypeError):
            return Outcome(rid, False, "bad", f"unexpected body {r}")
        if got == (want.text, want.finish_reason, want.completion_tokens):
            return Outcome(rid, False, "ok")
        return Outcome(rid, False, "bad", f"got {got}, want {(want.text, want.finish_reason, want.completion_tokens)}")


def _judge_error(rid: int, stream: bool, status: int, body) -> Outcome:
    err = body.get("error") if isinstance(body, dict) else None
    if status in (502, 503, 504) and isinstance(err, dict) and err.get("code") and err.get("message"):
        return Outcome(rid, stream, "error", f"HTTP {status} {err['code']}: {err['message']}")
    return Outcome(rid, stream, "bad", f"HTTP {status}: {body}")


def check_accounting(report: LoadReport, what: str, min_ok: int = 1) -> None:
    """Every request completed or got a clear error; none hung, none was answered twice."""
    c = report.counts()
    log(f"  load during {what}: {c} (errors e.g. {report.errors_sample(2)})")
    harness.check(not report.problems(), f"{what}: every request completed or got a clear error; "
                                         f"none hung, none answered twice ({sum(c.values())} requests)",
                  "\n".join(report.problems()[:10]))
    harness.check(c["ok"] >= min_ok, f"{what}: at least {min_ok} requests completed correctly", c)


# ---------------------------------------------------------------------------------------------
# Signals


def signal_pid(pid: int, sig: int) -> None:
    log(f"  {signal.Signals(sig).name} → pid {pid}")
    os.kill(pid, sig)


def signal_namespace(ns, sig: int) -> list[int]:
    """Sends `sig` to every process in a node's namespace (a whole node freezing or dying)."""
    pids = [p for p in ns.pids() if p != os.getpid()]
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
    log(f"  {signal.Signals(sig).name} → every process of {ns.name}: {pids}")
    return pids


# ---------------------------------------------------------------------------------------------
# /health and /metrics


def _get(port: int, path: str, ns=None) -> Optional[harness.Response]:
    try:
        if ns is not None:
            return ns.call(harness.request, port, "GET", path, None, None, 5)
        return harness.request(port, "GET", path, timeout=5)
    except (OSError, http.client.HTTPException):
        return None


def health(port: int, ns=None) -> Optional[dict]:
    r = _get(port, "/health", ns)
    body = r.json() if r else None
    return body if isinstance(body, dict) else None


def ready_ranks(port: int, ns=None) -> Optional[int]:
    h = health(port, ns)
    return None if h is None else h.get("ready_ranks")


def wait_ready_ranks(port: int, n: int, timeout: float, ns=None, interval: float = 0.05) -> bool:
    return wait_until(lambda: ready_ranks(port, ns) == n, timeout * slow_factor(), interval) is not None


_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\}\s+(\S+)$')


def metrics(port: int, ns=None) -> list[tuple[str, dict, float]]:
    """The head's /metrics as (name, labels, value) samples."""
    r = _get(port, "/metrics", ns)
    out = []
    if r is None or r.status != 200:
        return out
    for line in r.body.decode("utf-8", "replace").splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2)))
        out.append((m.group(1), labels, float(m.group(3))))
    return out


def rank_events(port: int, ns=None) -> dict[tuple[int, str], int]:
    """dpengine_rank_events_total as {(rank, reason): count}."""
    return {(int(l["rank"]), l["reason"]): int(v) for n, l, v in metrics(port, ns) if n == "dpengine_rank_events_total"}


def rank_states(port: int, ns=None) -> dict[int, str]:
    return {int(l["rank"]): l["state"] for n, l, v in metrics(port, ns) if n == "dpengine_rank_state" and v == 1}


def wait_event(port: int, rank: int, reason: str, at_least: int, timeout: float, ns=None) -> bool:
    return wait_until(lambda: rank_events(port, ns).get((rank, reason), 0) >= at_least,
                      timeout * slow_factor(), 0.1) is not None


# ---------------------------------------------------------------------------------------------
# Deployments for the scenarios

FAST_HANDSHAKE = {"heartbeat_interval": 0.3, "heartbeat_timeout": 1.5}


def local_config(override: Optional[dict] = None) -> dict:
    """DP=2 on one node with 10 ms steps, fast heartbeats and a quick restart (the single-node
    fault scenarios), merged with `override`."""
    return harness.merge({"data_parallel": {"size": 2}, "engine": {"step_time_ms": 10.0, "max_batch": 64},
                          "handshake": FAST_HANDSHAKE, "supervision": {"restart_backoff": 0.2}}, override)


def two_nodes(c, a, b, grace: float = 4.0, head_config: Optional[dict] = None,
              node_config: Optional[dict] = None, head_address: Optional[str] = None, rpc_port: Optional[int] = None):
    """The head (rank 0) in namespace `a` and headless node B (rank 1) in `b`, not started.
    Node B gives up on a silent head after `grace` seconds (supervision.head_grace_period).
    head_address/rpc_port: where node B connects instead of the head itself (a proxy)."""
    head = c.head(a, dp=2, dpl=1, authorized=[("node-b", "1-1")],
                  config=harness.merge({"supervision": {"restart_backoff": 0.2}}, head_config))
    extra = []
    if head_address is not None:
        extra = ["--data-parallel-address", head_address]
    if rpc_port is not None:
        extra += ["--data-parallel-rpc-port", str(rpc_port)]
    node_b = c.headless(b, "node-b", dp=2, dpl=1, dpr=1, extra_args=extra,
                        config=harness.merge({"supervision": {"head_grace_period": grace, "restart_backoff": 0.2}},
                                             node_config))
    return head, node_b


def start_two_nodes(c, a, b, ready_timeout: float = 30.0, **kwargs):
    """two_nodes(c, a, b, **kwargs), both daemons started, the head ready and both ranks ready
    (the head's READY=1 waits only for its own rank)."""
    head, node_b = two_nodes(c, a, b, **kwargs)
    head.start()
    node_b.start()
    head.wait_ready(ready_timeout)
    check(head.wait_ready_ranks(2, ready_timeout), "both ranks are ready", head.health())
    return head, node_b


@contextlib.contextmanager
def two_node_cluster(tag: str, handshake: Optional[dict] = None, **kwargs):
    """A network with the namespaces "head" and "b", a Cluster on it (FAST_HANDSHAKE unless
    `handshake` is given) and start_two_nodes(**kwargs): yields (a, b, cluster, head, node_b).
    Everything is stopped and removed on leaving."""
    with netns.Network(tag) as net:
        a, b = net.add_nodes("head", "b")
        with netns.Cluster(net, "ipv4", handshake=FAST_HANDSHAKE if handshake is None else handshake) as c:
            head, node_b = start_two_nodes(c, a, b, **kwargs)
            yield a, b, c, head, node_b


# The reasons dpengine_rank_events_total gives for losing a rank (dpengined(8), FAULT HANDLING).
LOSS_REASONS = ("rank-exited", "connection-lost", "heartbeat-timeout", "hung", "handshake-timeout", "rank-replaced")


def losses(port: int, rank: int, ns=None) -> int:
    """How often the head lost `rank`, whatever the reason it saw first."""
    return sum(v for (r, reason), v in rank_events(port, ns).items() if r == rank and reason in LOSS_REASONS)


def wait_losses(port: int, rank: int, at_least: int, timeout: float, ns=None) -> bool:
    return wait_until(lambda: losses(port, rank, ns) >= at_least, timeout * slow_factor(), 0.1) is not None


# ---------------------------------------------------------------------------------------------
# Single requests on their own threads, judged one by one

CALL_TIMEOUT = 40.0  # no single request may take longer than this: none hangs


class Call:
    """One completion (plain or streaming; /v1/completions, or /v1/chat/completions with the
    prompt as the user's message) on its own thread, started by start(port). outcome() judges
    it once it ended: ("ok" | "error" | "bad", detail). "ok" is exactly the expected text,
    cut by max_tokens; "error" is a clear error as clear_error() defines it (for a stream: one
    error event, then [DONE], after a prefix of the expected text); anything else is "bad"."""

    def __init__(self, i: int, stream: bool, prompt: str, max_tokens: int, chat: bool = False):
        self.i, self.stream, self.chat, self.max_tokens = i, stream, chat, max_tokens
        if chat:
            messages = [{"role": "user", "content": prompt}]
            self.path, self.body, prompt = "/v1/chat/completions", {"messages": messages}, chat_prompt(messages)
        else:
            self.path, self.body = "/v1/completions", {"prompt": prompt}
        self.body |= {"max_tokens": max_tokens, "seed": i, "stream": stream}
        self.expected = synthetic_completion(prompt, i, max_tokens)
        self.port = None
        self.started = threading.Event()  # streaming: the first event arrived
        self.status = self.result = self.error = self.ended = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self, port: int) -> "Call":
        self.port = port
        self.thread.start()
        return self

    def run(self) -> None:
        try:
            if self.stream:
                s = stream_sse_full(self.port, self.path, self.body, timeout=CALL_TIMEOUT,
                                    on_event=lambda _ev: self.started.set())
                self.status, self.result, self.error = s.status, s, s.error
            else:
                self.status, self.result = post_json(self.port, self.path, self.body, timeout=CALL_TIMEOUT)
        except Exception as e:  # noqa: BLE001 - recorded, judged by outcome()
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.ended = time.monotonic()
            self.started.set()

    def clear_error(self, error: dict, status: Optional[int]) -> bool:
        """Whether an OpenAI error object is an acceptable clear error: `status` is the HTTP
        status of a plain request, None for an SSE error event."""
        raise NotImplementedError

    def outcome(self) -> tuple[str, str]:
        if self.error:
            return "bad", f"transport: {self.error}"
        if not self.stream:
            r = self.result
            if self.status == 200:
                c = r["choices"][0]
                text = c["message"]["content"] if self.chat else c["text"]
                if text == self.expected.text and c["finish_reason"] == "length" \
                        and r["usage"]["completion_tokens"] == self.max_tokens:
                    return "ok", ""
                return "bad", f"200 with wrong content: {r}"
            err = r.get("error") if isinstance(r, dict) else None
            if isinstance(err, dict) and self.clear_error(err, self.status):
                return "error", err["message"]
            return "bad", f"HTTP {self.status}: {r}"
        s = self.result
        if self.status != 200:
            return "bad", f"HTTP {self.status}: {s.events}"
        if not s.done:
            return "bad", f"stream without [DONE] at the end: {s.events[-3:]}"
        errors = stream_errors(s.events)
        text = stream_text(s.events, 0, self.chat)
        if not errors:
            if text == self.expected.text and stream_finish_reason(s.events) == "length":
                return "ok", ""
            return "bad", (f"stream text/finish wrong ({len(text)} of {len(self.expected.text)} chars): "
                           f"{text!r} {stream_finish_reason(s.events)!r}")
        e = errors[0]
        if len(errors) == 1 and s.events[-2] == {"error": e} and self.expected.text.startswith(text) \
                and self.clear_error(e, None):
            return "error", e["message"]
        return "bad", f"stream error events {errors}, last events {s.events[-3:]}"


def join_calls(calls: list[Call]) -> None:
    """Waits for every call (bounded by the client timeout); none may hang."""
    for c in calls:
        c.thread.join(CALL_TIMEOUT + 10)
    hung = [c.i for c in calls if c.thread.is_alive()]
    check(not hung, "no request hangs", hung)


def outcomes(calls: list[Call]) -> dict[str, list[tuple[Call, str]]]:
    """Every call's outcome by kind: {"ok" | "error" | "bad": [(call, detail)]}."""
    out: dict = {"ok": [], "error": [], "bad": []}
    for c in calls:
        kind, detail = c.outcome()
        out[kind].append((c, detail))
    return out


def check_none_bad(out: dict[str, list[tuple[Call, str]]], what: str) -> None:
    bad = [f"request {c.i} ({'stream' if c.stream else 'plain'}, {c.max_tokens} tokens): {d}" for c, d in out["bad"]]
    check(not bad, what, "\n".join(bad))


class RankLossCall(Call):
    """A request of the rank-kill mix: its clear error is the loss of rank `victim` (HTTP 502
    rank-lost naming the rank; in a stream, that error event and no finish reason)."""

    def __init__(self, i: int, stream: bool, victim: int, max_tokens: int):
        super().__init__(i, stream, f"request {i} on a data-parallel engine", max_tokens, chat=i % 3 == 0)
        self.victim = victim

    def clear_error(self, error: dict, status: Optional[int]) -> bool:
        names_victim = error.get("code") == "rank-lost" and f"rank {self.victim}" in error.get("message", "")
        if status is None:
            return names_victim and stream_finish_reason(self.result.events) is None
        return status == 502 and error.get("type") == "server_error" and names_victim


def start_kill_mix(port: int, victim: int, per_kind: int = 20, max_tokens: int = 150) -> list[RankLossCall]:
    """`per_kind` plain and as many streaming requests (every third one a chat), all in flight
    when this returns: the plain ones first, so that by the time every stream has its first
    token all were routed (least in-flight, before any finishes). With 20 ms per engine step,
    150 tokens last ~3 s."""
    plain = [RankLossCall(i, False, victim, max_tokens) for i in range(per_kind)]
    streams = [RankLossCall(per_kind + i, True, victim, max_tokens) for i in range(per_kind)]
    for c in plain:
        c.start(port)
    time.sleep(0.3)
    for c in streams:
        c.start(port)
    calls = plain + streams
    check(all(c.started.wait(10 * slow_factor()) for c in streams), "every stream produced its first token")
    time.sleep(0.3)
    check(all(c.ended is None for c in calls), "no request finished before the kill")
    return calls


def judge_kill_mix(calls: list[RankLossCall], victim: int) -> tuple[list[RankLossCall], list[RankLossCall]]:
    """Waits for the mix and judges it: every request completed correctly or failed with the
    victim's clear error. Returns (completed, lost)."""
    join_calls(calls)
    out = outcomes(calls)
    ok, lost = [c for c, _ in out["ok"]], [c for c, _ in out["error"]]
    log(f"  {len(ok)} completed, {len(lost)} failed with rank {victim}'s error, {len(out['bad'])} other")
    check_none_bad(out, "every request either completed correctly or failed with a clear rank error")
    return ok, lost


def fresh_requests_succeed(port: int, n: int) -> list[bool]:
    """`n` short requests one after another (every second one streaming): whether each got
    exactly the expected text."""
    out = []
    for i in range(n):
        text = f"after the kill {i}"
        stream = i % 2 == 1
        body = {"prompt": text, "max_tokens": 5, "seed": i, "stream": stream}
        if stream:
            s = stream_sse_full(port, "/v1/completions", body, timeout=30)
            out.append(s.status == 200 and s.done and not stream_errors(s.events)
                       and stream_text(s.events) == synthetic_completion(text, i, 5).text)
        else:
            status, r = post_json(port, "/v1/completions", body, timeout=30)
            out.append(status == 200 and r["choices"][0]["text"] == synthetic_completion(text, i, 5).text)
    return out
