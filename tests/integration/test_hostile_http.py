"""Hostile HTTP clients: the front-end answers each with an OpenAI-style error or a close,
keeps serving everyone else, and gets its memory and file descriptors back.

Against a DP=1 daemon (frontend.max_body_bytes = 64 KiB, idle_timeout = 2 s,
max_connections = 2500), one case after the other:
  - 50 slowloris clients dribbling a request's headers one byte at a time: each is closed
    within a bounded time (the request must arrive within frontend.idle_timeout), while a
    normal completion goes through meanwhile;
  - huge headers (one 64 KiB header; 2000 small ones): 431 or a close;
  - huge bodies, announced (Content-Length of 1 GiB) and sent (1 MiB, by 8 clients at once):
    413 body-too-large;
  - invalid UTF-8, deeply nested JSON, negative and absurd max_tokens on both endpoints:
    400 with the OpenAI error object naming the problem;
  - 2400 idle connections: a completion succeeds while they are open; 600 more, past
    max_connections: closed at once, so the daemon's fds stay bounded; all of them are closed
    after idle_timeout and completions succeed again.
At the end the daemon's resident memory and fds are back to their baseline.
"""

import json
import socket
import threading
import time

import harness
from harness import (HOST, Daemon, Footprint, check, expect_error, log, post_json, raw_exchange, run_test,
                     slow_factor, synthetic_completion)

MAX_BODY = 64 << 10
IDLE_TIMEOUT = 2.0
MAX_CONNECTIONS = 2500
IDLE_CLIENTS = 3000
COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"


def serves(d: Daemon, what: str) -> None:
    st, resp = post_json(d.port, COMPLETIONS, {"prompt": f"after {what}", "max_tokens": 4, "seed": 1})
    check(st == 200 and resp["choices"][0]["text"] == synthetic_completion(f"after {what}", 1, 4).text,
          f"a real completion succeeds after {what}", (st, resp))


def slowloris(d: Daemon) -> None:
    log("slowloris:")
    head = f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: " + "z" * 200
    socks = [socket.create_connection((HOST, d.port), timeout=5) for _ in range(50)]
    stop = threading.Event()

    def dribble():
        for ch in head.encode():
            if stop.is_set():
                return
            for s in socks:
                try:
                    s.send(bytes([ch]))
                except OSError:
                    pass
            time.sleep(0.1)

    t = threading.Thread(target=dribble, daemon=True)
    t.start()
    serves(d, "slowloris clients connected")
    left = harness.wait_closed_by_peer(list(socks), IDLE_TIMEOUT * 10 * slow_factor())
    stop.set()
    t.join(5)
    check(left == 0, f"every slowloris client is closed within the bound ({left} still open)")


def huge(d: Daemon) -> None:
    log("huge headers and bodies:")
    out = raw_exchange(d.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 10) + b"\r\n\r\n", timeout=5)
    check(out.startswith(b"HTTP/1.1 431 ") or out == b"", "one 64 KiB header: 431 (or a close)", out[:200])
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
    out = raw_exchange(d.port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n", timeout=5)
    check(out.startswith(b"HTTP/1.1 431 ") or out == b"", "2000 headers: 431 (or a close)", out[:200])
    if out.startswith(b"HTTP/1.1 431 "):
        check(b'"error"' in out and b"headers-too-large" in out, "the 431 carries an OpenAI error object", out[:300])
    out = raw_exchange(d.port, (f"POST {COMPLETIONS} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                f"Content-Length: {1 << 30}\r\n\r\n").encode(), timeout=5)
    check(out.startswith(b"HTTP/1.1 413 ") and b"body-too-large" in out, "Content-Length of 1 GiB: 413 body-too-large",
          out[:300])
    results = []

    def big_body(i):
        # The server may answer before the body is all sent and close; a reset can then eat
        # the answer, so a close counts too.
        body = json.dumps({"prompt": "a" * (1 << 20)}).encode()
        head = (f"POST {COMPLETIONS if i % 2 else CHAT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        results.append(raw_exchange(d.port, head + body, timeout=10 * slow_factor()))

    threads = [threading.Thread(target=big_body, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60 * slow_factor())
    check(len(results) == 8, "all 8 clients sending 1 MiB bodies are done", len(results))
    for out in results:
        check((out.startswith(b"HTTP/1.1 413 ") and b"body-too-large" in out) or out == b"",
              "a 1 MiB body: 413 body-too-large (or a close)", out[:300])
    serves(d, "huge headers and bodies")


def bad_values(d: Daemon) -> None:
    log("bad values:")
    chat = lambda **kw: {"messages": [{"role": "user", "content": "x"}], **kw}  # noqa: E731
    for path, body in ((COMPLETIONS, b'{"prompt": "\xff\xfe\xfd"}'),
                       (CHAT, b'{"messages": [{"role": "user", "content": "\xc3\x28"}]}')):
        expect_error(d, path, body, 400, f"{path}: invalid UTF-8", message_has="invalid UTF-8")
    for path, body in ((COMPLETIONS, '{"prompt": "x", "stop": ' + "[" * 10000 + "]" * 10000 + "}"),
                       (CHAT, '{"messages": ' + '[{"content":' * 3000 + '"x"' + "}]" * 3000 + "}")):
        expect_error(d, path, body, 400, f"{path}: nested thousands deep", message_has="nests deeper")
    for value in (-1, -(2**63), 0, 2**32, 2**64 + 5, 1e300, -1e300, "16", [], {}, True):  # null is the default
        expect_error(d, COMPLETIONS, {"prompt": "x", "max_tokens": value}, 400,
                     f"completion max_tokens {json.dumps(value)}", param="max_tokens")
        expect_error(d, CHAT, chat(max_completion_tokens=value), 400,
                     f"chat max_completion_tokens {json.dumps(value)}", param="max_completion_tokens")
    serves(d, "bad values")


def idle_connections(d: Daemon) -> None:
    under = MAX_CONNECTIONS - 100
    log(f"{under} idle connections, then {IDLE_CLIENTS - under} over frontend.max_connections:")
    socks = [socket.create_connection((HOST, d.port), timeout=5) for _ in range(under)]
    log(f"  {len(socks)} connected; the daemon has {harness.fd_count(d.pid)} fds")
    serves(d, f"{under} idle connections opened")
    over = []
    for _ in range(IDLE_CLIENTS - under):
        try:
            over.append(socket.create_connection((HOST, d.port), timeout=5))
        except OSError:
            pass  # refused outright: as good as closed
    fds = harness.fd_count(d.pid)
    check(fds <= MAX_CONNECTIONS + 100, f"the daemon holds at most frontend.max_connections connections ({fds} fds)")
    # Past the limit new connections are closed at once, so the daemon's fds stay bounded;
    # the idle ones go after frontend.idle_timeout, and then clients are served again.
    left = harness.wait_closed_by_peer(socks + over, IDLE_TIMEOUT * 10 * slow_factor())
    check(left == 0, f"every idle connection is closed within the bound ({left} still open)")
    serves(d, "idle connections")


def main() -> None:
    harness.raise_fd_limit(IDLE_CLIENTS * 2 + 1024)
    # Every client here is 127.0.0.1: the per-client cap (test_client_connection_cap) is
    # lifted so that the global one is what the idle connections meet.
    config = {"frontend": {"max_body_bytes": MAX_BODY, "idle_timeout": IDLE_TIMEOUT, "max_connections": MAX_CONNECTIONS,
                           "max_connections_per_client": IDLE_CLIENTS},
              "engine": {"step_time_ms": 1.0}}
    with Daemon(config, name="hostile-http") as d:
        d.wait_ready(30)
        for i in range(16):
            serves(d, f"warm-up {i}")
        baseline = Footprint(d.pid)
        log(f"baseline: {baseline}")
        slowloris(d)
        huge(d)
        bad_values(d)
        idle_connections(d)
        serves(d, "everything")
        baseline.check_returned("after every hostile client")
        check(d.running(), "the daemon is still alive")
        check(d.stop() == 0, "exit status 0 after SIGTERM")
        log_text = d.log_text()
        check("AddressSanitizer" not in log_text and "runtime error:" not in log_text, "no sanitizer reports in the log")


if __name__ == "__main__":
    run_test(main, timeout=240)
