"""The http backend when a running server stops passing its health checks: one rank whose
server (a small Python HTTP server) answers its health path with 200 until the test creates
a flag file, then 503.

Checks: the rank becomes ready while the server is healthy; after the flag appears, the rank
reports "backend-unhealthy" (three failed checks in a row), exits with status 1 and is
restarted by the daemon (not a configuration error: status 1 is retried), and its old server
is stopped; once the flag is gone the new rank's new server is healthy and the rank is ready
again.
"""

import os
import shutil
import sys
import tempfile

from harness import Daemon, check, cmdline, get, log, pid_alive, run_test, wait_until
from httpbackend import backend_servers

SERVER = r"""
import http.server, os, sys
port, flag = int(sys.argv[2]), sys.argv[3]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        healthy = self.path == "/health" and not os.path.exists(flag)
        self.send_response(200 if healthy else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="dpe-http-health-")
    flag = os.path.join(tmp, "unhealthy")
    try:
        engine = {"backend": "http", "command": [sys.executable, "-c", SERVER, "--port", "{port}", flag],
                  "ready_timeout": 30.0}
        with Daemon({"engine": engine, "supervision": {"restart_backoff": 0.5}}, name="http-health-lost") as d:
            d.wait_ready(40)
            server = backend_servers(d, os.path.basename(sys.executable)).get(0)
            check(server, "rank 0 runs its server")
            open(flag, "w").close()
            log("  the server now answers 503")
            check(d.wait_log(r"failed 3 health checks in a row; last: GET http://127\.0\.0\.1:\d+/health: "
                             r"HTTP 503 \(backend-unhealthy\)", 60),
                  "the rank reports its unhealthy server with the reason code")
            check(d.wait_log(r"rank 0 \(pid \d+\) exited with status 1", 15), "the rank exits with status 1")
            check(d.wait_log(r"restarting rank 0 in", 15), "the daemon restarts the rank")
            check(wait_until(lambda: not pid_alive(server), 15), "the old server was stopped")
            os.unlink(flag)
            log("  the server answers 200 again")
            check(wait_until(lambda: get(d.port, "/health")[1].get("ready_ranks") == 1, 60),
                  "the restarted rank is ready with a new server")
            new = backend_servers(d, os.path.basename(sys.executable)).get(0)
            check(new and new != server and flag in cmdline(new), "a new server runs", new)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_test(main, timeout=180)
