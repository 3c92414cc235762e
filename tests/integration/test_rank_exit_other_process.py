"""The local supervisor's handling of a rank process's exit touches only that process's
registration: a rank held by another process keeps serving.

A head with one local rank (process A). A second dpengine-rank process B, started by hand with
A's command line, is refused as a duplicate while A serves and keeps retrying. A is stopped
(SIGSTOP): the head declares it lost, kills it, and B takes the rank over. The supervisor's
restart of A (process A2, after supervision.restart_backoff) is refused as a duplicate in turn,
and is then killed. Before this fix A2's start made the rank "connecting" again and A2's exit
failed B's registration ("rank-exited"), although B never was the supervisor's process. Now the
rank stays ready with B throughout: no rank-exited event is counted for A2, completions succeed,
and the log says the rank stays with the process that registered it.
"""

import os
import signal
import subprocess
import time

import faults
import harness
from harness import Daemon, check, check_eq, log, run_test, slow_factor, wait_until

BACKOFF = 8.0


def main() -> None:
    config = {"handshake": {"heartbeat_interval": 0.3, "heartbeat_timeout": 1.5},
              "supervision": {"restart_backoff": BACKOFF}}
    with Daemon(config, name="exit-other") as d:
        d.wait_ready(30)
        a = d.ranks()[0]
        argv = harness.cmdline(a)
        check(argv and "--rank" in argv, "the rank's command line is readable", argv)
        b_log = open(os.path.join(d.tmp, "rank-b.log"), "wb")
        b = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=b_log, stderr=b_log, start_new_session=True)
        try:
            check(wait_until(lambda: b"duplicate-rank" in open(b_log.name, "rb").read() or
                             b"still holds rank" in open(b_log.name, "rb").read(), 15 * slow_factor(), 0.1),
                  "the second process is refused as a duplicate while the first serves")
            log("--- SIGSTOP the supervisor's rank process: lost, killed, and the other process takes the rank")
            os.kill(a, signal.SIGSTOP)
            stopped_at = time.monotonic()
            check(faults.wait_event(d.port, 0, "heartbeat-timeout", 1, 10), "the stopped rank is lost",
                  faults.rank_events(d.port))
            check(wait_until(lambda: faults.rank_states(d.port).get(0) == "ready", 10 * slow_factor(), 0.05),
                  "rank 0 is ready again", faults.rank_states(d.port))
            check(wait_until(lambda: not harness.pid_alive(a), 10 * slow_factor(), 0.05),
                  "the stopped process was killed")
            check(time.monotonic() - stopped_at < 1.5 + BACKOFF, "the other process registered before the restart")
            check(d.wait_log(r"rank 0 joined", 5), "the head logs the registration")

            log("--- the supervisor's restart is refused as a duplicate; the rank stays ready with the other process")
            check(wait_until(lambda: d.ranks().get(0) not in (None, a), (BACKOFF + 10) * slow_factor(), 0.05),
                  "the supervisor started a new process for rank 0")
            a2 = d.ranks()[0]
            check(d.wait_log(r"refused rank 0 .*duplicate-rank", 10 * slow_factor()),
                  "the restarted process is refused as a duplicate")
            check_eq(faults.rank_states(d.port).get(0), "ready", "rank 0 stays ready")
            exited_before = faults.rank_events(d.port).get((0, "rank-exited"), 0)
            os.kill(a2, signal.SIGKILL)
            check(d.wait_log(rf"rank 0 process {a2} killed by signal KILL; the rank stays with the process that "
                             rf"registered it", 10 * slow_factor()),
                  "the supervisor's exit handling leaves the other process's registration alone")
            time.sleep(1.0)
            check_eq(faults.rank_events(d.port).get((0, "rank-exited"), 0), exited_before,
                     "no rank-exited is counted for the other process's rank")
            check_eq(faults.rank_states(d.port).get(0), "ready", "rank 0 is still ready")
            for i in range(3):
                status, body = harness.post_json(d.port, "/v1/completions",
                                                 {"model": "synthetic", "prompt": f"still served {i}", "max_tokens": 3})
                check_eq(status, 200, f"completion {i}")
                check_eq(body["choices"][0]["text"], harness.synthetic_text(f"still served {i}", 0, 3), "its text")
            check(b.poll() is None, "the other process still runs")
        finally:
            if b.poll() is None:
                b.kill()
            b.wait(10)
            b_log.close()
            try:
                os.kill(a, signal.SIGKILL)
            except ProcessLookupError:
                pass
        d.stop()


if __name__ == "__main__":
    run_test(main, timeout=120)
