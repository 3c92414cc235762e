"""The daemon under a small open-file limit (issue 14, item 4): it raises its soft limit to the
hard one at start, keeps frontend.max_connections within the limit, and when descriptors run
out all the same it pauses accepting with back-off instead of spinning and flooding its log.

  1. Started with nofile 128 (soft) / 8192 (hard): its soft limit is 8192.
  2. Started with nofile 128:128: it logs that it serves fewer than frontend.max_connections
     (16384) connections; 200 idle connections cost it under 1 s of CPU over 5 s, a handful
     of log lines and at most 128 fds; once they leave a normal request is served.
  3. Its soft limit then lowered to 48 from outside (prlimit --pid), so that accepting runs
     out of descriptors below the connection limit: 200 idle connections again cost under
     1 s of CPU over 5 s and a handful of log lines, among them the one that says accepts
     pause; once they leave a normal request is served.
"""

import socket
import subprocess
import time

from harness import (HOST, Daemon, check, check_eq, cpu_ns, fd_count, log, post_json, raise_fd_limit, run_test,
                     slow_factor, synthetic_completion, wait_until)

IDLE = 200


def nofile(pid: int) -> tuple[int, int]:
    """The soft and hard RLIMIT_NOFILE of `pid`."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def serves(d: Daemon, what: str) -> bool:
    try:
        st, resp = post_json(d.port, "/v1/completions", {"prompt": what, "max_tokens": 3, "seed": 2}, timeout=5)
    except OSError:
        return False
    return st == 200 and resp["choices"][0]["text"] == synthetic_completion(what, 2, 3).text


def idle_flood(d: Daemon, what: str) -> None:
    """Opens IDLE connections that send nothing, and checks what they cost the daemon."""
    lines_before = len(d.log_text().splitlines())
    socks = []
    for _ in range(IDLE):
        try:
            socks.append(socket.create_connection((HOST, d.port), timeout=5))
        except OSError:
            pass  # refused outright: fine
    log(f"  {len(socks)} connections made; the daemon has {fd_count(d.pid)} fds")
    before = cpu_ns(d.pid)
    time.sleep(5)
    used = (cpu_ns(d.pid) - before) / 1e9
    log(f"  the daemon used {used:.3f} s of CPU in 5 s")
    check(used < 1.0, f"{what}: under 1 s of CPU in 5 s with {IDLE} idle connections", used)
    check(fd_count(d.pid) <= nofile(d.pid)[0], f"{what}: the daemon's fds stay within its limit", fd_count(d.pid))
    new_lines = d.log_text().splitlines()[lines_before:]
    log("  new log lines:\n    " + "\n    ".join(new_lines))
    check(len(new_lines) <= 6, f"{what}: a handful of log lines ({len(new_lines)})")
    for s in socks:
        s.close()
    check(wait_until(lambda: serves(d, f"after {what}"), 20 * slow_factor(), 0.2),
          f"{what}: once the idle clients left, a normal request is served")
    check(d.running(), f"{what}: the daemon runs")


def main() -> None:
    raise_fd_limit(4 * IDLE)

    log("1. soft limit 128, hard 8192:")
    with Daemon(name="nofile-soft", wrapper=["prlimit", "--nofile=128:8192", "--"]) as d:
        d.wait_ready(30)
        check_eq(nofile(d.pid), (8192, 8192), "the daemon raised its soft open-file limit to the hard one")
        check_eq(d.stop(), 0, "exit status 0")

    log("2. nofile 128:128:")
    with Daemon(name="nofile-128", wrapper=["prlimit", "--nofile=128:128", "--"]) as d:
        d.wait_ready(30)
        check(serves(d, "start"), "serves at start")
        check(d.wait_log(r"frontend\.max_connections is 16384, but the open-file limit \(128\) leaves room for \d+ client "
                         r"connections", 5), "the daemon says it serves fewer connections than max_connections")
        idle_flood(d, "at the connection limit the open-file limit leaves")

        log("3. the soft limit lowered to 48 while it runs:")
        subprocess.run(["prlimit", f"--pid={d.pid}", "--nofile=48:128"], check=True, timeout=10)
        check_eq(nofile(d.pid), (48, 128), "the daemon's limit is lowered")
        idle_flood(d, "out of descriptors")
        check("cannot accept HTTP connections" in d.log_text(), "the log says accepts pause for lack of descriptors")
        check_eq(d.stop(), 0, "exit status 0")


if __name__ == "__main__":
    run_test(main, timeout=180)
