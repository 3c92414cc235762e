"""Clients that do not read their responses cannot take the head's memory (issue 14, item 2).

Against a DP=1 synthetic daemon that produces output as fast as it can (step_time_ms 0), with
frontend.max_buffered_output = 256 KiB and frontend.write_timeout = 3 s:
  - 20 streaming clients, each with a 4 KiB receive buffer, ask for n = 16 and
    max_tokens = 8192 (26 MB of events each) and never read. The head's peak resident memory
    (VmHWM) stays within a bound derived from the cap (baseline + 20 x 4 x cap + 64 MiB for
    the allocator and the rank link; 4 times that room in sanitizer builds), not the hundreds
    of MB the streams amount to; every
    connection is closed (once a client drains the little that was in flight it sees the
    end, long before its 26 MB); each counts in
    dpengine_http_connections_closed_total{reason="slow-client"}; the rank's in-flight load
    returns to 0 and its process goes idle (its engine was told to stop: its CPU time over
    3 s stays under 1 s); the log has a handful of lines about it, not one per client.
  - one non-streamed request for 16 x 65536 tokens (5 MB) from a client that never reads: its
    response waits in one write, so the write deadline closes it.
  - a normal client is served afterwards, and the daemon's fds are back to the baseline.
"""

import json
import socket
import time

import harness
from harness import (HOST, Daemon, check, check_eq, cpu_ns, log, per_rank_metric, post_json,
                     run_test, slow_factor, synthetic_completion, wait_until)

CAP = 256 << 10
WRITE_TIMEOUT = 3.0
CLIENTS = 20
MAX_TOKENS = 8192
N = 16
# A whole response larger than the kernel's socket buffers on loopback (up to 4 MiB to send,
# 4 KiB to receive), so that it waits in the head.
WHOLE_TOKENS = 65536


def non_reader(port: int, body: dict) -> socket.socket:
    """A connection with a 4 KiB receive buffer that sends one request and reads nothing."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
    s.settimeout(10)
    s.connect((HOST, port))
    data = json.dumps(body).encode()
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
    return s


def drained_to_end(s: socket.socket, limit: int, timeout: float) -> tuple[bool, int]:
    """Reads `s` until the server's close (True) or `limit` bytes or `timeout` (False); returns
    that and the bytes read."""
    got, deadline = 0, time.monotonic() + timeout
    s.settimeout(1)
    while got < limit and time.monotonic() < deadline:
        try:
            b = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return True, got  # reset: closed as well
        if not b:
            return True, got
        got += len(b)
    return False, got


def slow_client_closes(port: int) -> float:
    r = harness.request(port, "GET", "/metrics", timeout=10)
    return sum(v for labels, v in harness.parse_metric_samples(r.body.decode(), "dpengine_http_connections_closed")
               if labels.get("reason") == "slow-client")


def rank_idle(d: Daemon) -> bool:
    """The rank process uses under 1 s of CPU in 3 s: its engine has no work left."""
    pid = d.rank_pids()[0]
    before = cpu_ns(pid)
    time.sleep(3)
    used = (cpu_ns(pid) - before) / 1e9
    log(f"  rank 0 used {used:.2f} s of CPU in 3 s")
    return used < 1.0


def serves(d: Daemon, what: str) -> None:
    st, resp = post_json(d.port, "/v1/completions", {"prompt": f"after {what}", "max_tokens": 4, "seed": 1})
    check(st == 200 and resp["choices"][0]["text"] == synthetic_completion(f"after {what}", 1, 4).text,
          f"a normal client is served after {what}", (st, resp))


def main() -> None:
    config = {"frontend": {"max_buffered_output": CAP, "write_timeout": WRITE_TIMEOUT},
              "engine": {"max_model_len": WHOLE_TOKENS + 64, "step_time_ms": 0.0}}
    # The sanitizers' own tables grow with what is allocated: more room in their builds.
    scale = 4 if harness.is_sanitized_build() else 1
    with Daemon(config, name="slow-readers", env=harness.memory_check_env()) as d:
        d.wait_ready(30)
        serves(d, "start")
        baseline = harness.Footprint(d.pid)
        log(f"baseline: {baseline}, peak {harness.peak_rss_bytes(d.pid) >> 20} MiB")
        bound = baseline.rss + scale * (CLIENTS * 4 * CAP + (64 << 20))

        log(f"{CLIENTS} streaming clients (n={N}, max_tokens={MAX_TOKENS}) that never read:")
        body = {"prompt": "flood", "n": N, "max_tokens": MAX_TOKENS, "stream": True, "seed": 3}
        socks = [non_reader(d.port, body) for _ in range(CLIENTS)]
        closed = wait_until(lambda: slow_client_closes(d.port) >= CLIENTS, 60 * slow_factor(), 0.5)
        check(closed, f"all {CLIENTS} non-reading clients are closed as slow clients", slow_client_closes(d.port))
        peak = harness.peak_rss_bytes(d.pid)
        log(f"  peak resident memory {peak >> 20} MiB (bound {bound >> 20} MiB)")
        check(peak <= bound, f"the head's peak memory stays within baseline + {scale} x ({CLIENTS} x 4 x "
                             f"max_buffered_output + 64 MiB) = {bound >> 20} MiB", f"{peak >> 20} MiB")
        full = N * MAX_TOKENS * 100  # each event is well over 100 bytes
        for i, s in enumerate(socks):
            ended, got = drained_to_end(s, full, 30 * slow_factor())
            check(ended, f"client {i}: the head closed the connection after {got} bytes, not the whole stream")
            s.close()
        check(wait_until(lambda: per_rank_metric(d.port, "dpengine_rank_in_flight").get(0) == 0,
                         10 * slow_factor(), 0.2), "the rank's in-flight load returns to 0")
        check(wait_until(lambda: rank_idle(d), 30 * slow_factor(), 0), "the rank's engine stops (its process goes idle)")
        lines = [l for l in d.log_text().splitlines() if "does not read its response" in l]
        log("  " + "\n  ".join(lines))
        check(1 <= len(lines) <= 3, f"a handful of log lines about them, not one per client ({len(lines)})")
        serves(d, "the streaming non-readers")

        log(f"a non-streamed response of {WHOLE_TOKENS} tokens x {N} to a client that never reads:")
        before = slow_client_closes(d.port)
        s = non_reader(d.port, {"prompt": "whole", "n": N, "max_tokens": WHOLE_TOKENS, "seed": 4})
        check(wait_until(lambda: slow_client_closes(d.port) > before, (WRITE_TIMEOUT + 30) * slow_factor(), 0.5),
              "the write deadline closes it")
        ended, got = drained_to_end(s, 1 << 30, 30 * slow_factor())
        check(ended and got < N * WHOLE_TOKENS * 5, f"the connection ended after {got} bytes, before the whole response")
        s.close()
        serves(d, "the non-streamed non-reader")

        baseline.check_returned("after the non-readers", rss_slack=bound - baseline.rss)
        check_eq(d.stop(), 0, "exit status 0 after SIGTERM")


if __name__ == "__main__":
    run_test(main, timeout=240)
