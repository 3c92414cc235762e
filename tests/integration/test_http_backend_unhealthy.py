"""The http backend when a server never becomes healthy: each case runs one rank whose
server cannot pass its health check, with engine.ready_timeout = 3 s.

Cases: a server that never listens (a sleeping python), one whose health path answers 404 (a
dpengined asked for a path it does not have), and one that exits at once. Checks, for each:
the rank's log names the phase ("waiting for the backend's health check"), the reason code
and the command; the rank exits with status 78 and the daemon does not restart it (one start
over several seconds, and the daemon says so); nothing of the server is left running; the
daemon stays up and /health says no rank is ready.
"""

import re
import shutil
import sys
import tempfile
import time

from harness import Daemon, check, check_eq, get, log, processes_tagged, cmdline, run_test, slow_factor
from httpbackend import dpengined_server_engine

READY_TIMEOUT = 3.0
MARK = "never-healthy-server"


def run_case(name: str, engine: dict, evidence: str) -> None:
    log(f"-- {name}")
    config = {"engine": engine | {"ready_timeout": READY_TIMEOUT},
              "handshake": {"init_timeout": 60.0}, "supervision": {"restart_backoff": 0.2}}
    with Daemon(config, name=f"http-{name}") as d:
        check(d.wait_log(r"rank 0 exited with status 78|rank 0 \(pid \d+\) exited with status 78", 30),
              "the rank exits with status 78")
        text = d.log_text()
        line = next((l for l in text.splitlines() if "waiting for the backend's health check" in l), "")
        check(line, "the rank's log names the phase", text[-3000:])
        check(evidence in line, f"the message says what went wrong ({evidence!r})", line)
        check(engine["command"][0] in line, "the message names the command", line)
        check("will not be restarted" in text, "the daemon says it will not restart the rank")
        time.sleep(4 * slow_factor())
        # The daemon's own lines (the server's, forwarded by the rank, may say the same).
        starts = len(re.findall(r"^dpengined: info: rank 0 started", d.log_text(), re.M))
        check_eq(starts, 1, "starts of rank 0 over several seconds")
        check(d.running(), "the daemon still runs")
        status, health = get(d.port, "/health")
        check(status == 503 and health.get("ready_ranks") == 0, "no rank is ready", health)
        left = [p for p in processes_tagged(d.tag) if p != d.pid and MARK in " ".join(cmdline(p))]
        check(not left, "nothing of the server is left", left)


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="dpe-http-unhealthy-")
    try:
        run_case("never-listens", {
            "backend": "http",
            "command": [sys.executable, "-c", "import sys, time; time.sleep(600)", MARK, "--port", "{port}"],
        }, "did not pass its health check within 3 s")

        server = dpengined_server_engine(tmp, health_path="/no-such-path")
        server["command"] = server["command"] + ["--node-name", MARK]
        run_case("health-404", server, "HTTP 404")

        run_case("exits-at-once", {
            "backend": "http",
            "command": [sys.executable, "-c", "import sys; sys.exit(3)", MARK, "--port", "{port}"],
        }, "exited with status 3")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_test(main, timeout=180)
