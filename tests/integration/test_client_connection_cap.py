"""One client cannot hold every connection slot (issue 14, item 8): with
frontend.max_connections_per_client = 8, a client address that opens 40 idle connections keeps
8 (the others are closed at once, counted in
dpengine_http_connections_closed_total{reason="client-limit"}, with a log line or so, not 33),
while a client at another address (127.0.0.2) is served meanwhile; once the first client's
connections close, it is served again. A reload raises the cap, and then 20 connections stay.
"""

import http.client
import os
import signal
import socket

import harness
from harness import (HOST, Daemon, check, check_eq, log, merge, post_json, run_test, slow_factor,
                     synthetic_completion, wait_until, write_config)

CAP = 8
OPENED = 40


def connect_from(port: int, source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.settimeout(5)
    s.connect((HOST, port))
    return s


def completion_from(port: int, source: str, prompt: str) -> bool:
    s = connect_from(port, source)
    try:
        body = ('{"prompt": "%s", "max_tokens": 3, "seed": 5}' % prompt).encode()
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    except OSError:
        return False
    finally:
        s.close()
    return data.startswith(b"HTTP/1.1 200 ") and synthetic_completion(prompt, 5, 3).text.encode() in data


def client_limit_closes(port: int) -> float:
    """From /metrics, asked from an address of its own (127.0.0.3), which the cap leaves alone."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10, source_address=("127.0.0.3", 0))
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    return sum(v for labels, v in harness.parse_metric_samples(text, "dpengine_http_connections_closed")
               if labels.get("reason") == "client-limit")


def main() -> None:
    with Daemon({"frontend": {"max_connections_per_client": CAP}}, name="client-cap") as d:
        d.wait_ready(30)
        socks = [connect_from(d.port, "127.0.0.1") for _ in range(OPENED)]
        check(wait_until(lambda: client_limit_closes(d.port) >= OPENED - CAP, 10 * slow_factor(), 0.2),
              f"{OPENED - CAP} connections over the cap are closed", client_limit_closes(d.port))
        check(completion_from(d.port, "127.0.0.2", "other client"), "a client at another address is served meanwhile")
        check(not completion_from(d.port, "127.0.0.1", "same client"), "the capped client's next connection is closed")
        lines = [l for l in d.log_text().splitlines() if "max_connections_per_client" in l]
        log("  " + "\n  ".join(lines))
        # One line per 10 s: one here, where the machine is not very slow.
        check(1 <= len(lines) <= 3, f"a line or so for {OPENED - CAP + 1} closed connections, not one each ({len(lines)})")
        # The first CAP connections are the ones kept; the server closed every later one.
        left = harness.wait_closed_by_peer(socks[CAP:], 5 * slow_factor())
        check_eq(left, 0, "every connection past the cap was closed by the server")
        for s in socks[:CAP]:
            s.close()
        check(wait_until(lambda: completion_from(d.port, "127.0.0.1", "again"), 10 * slow_factor(), 0.2),
              "once its connections closed, the client is served again")

        write_config(d.tmp, merge(d.config, {"frontend": {"max_connections_per_client": 20}}))
        reloads = d.log_text().count("configuration reloaded")
        os.kill(d.pid, signal.SIGHUP)
        check(wait_until(lambda: d.log_text().count("configuration reloaded") > reloads, 10), "reloaded")
        before = client_limit_closes(d.port)
        socks = [connect_from(d.port, "127.0.0.1") for _ in range(30)]
        check(wait_until(lambda: client_limit_closes(d.port) >= before + 10, 10 * slow_factor(), 0.2),
              "with the raised cap, 10 of 30 connections are closed")
        left = harness.wait_closed_by_peer(socks, 2)
        check_eq(left, 20, "20 connections stay open")
        check_eq(d.stop(), 0, "exit status 0")


if __name__ == "__main__":
    run_test(main, timeout=120)
