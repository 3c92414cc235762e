"""Fault tolerance: a rank that fails at initialisation (a backend setting the engine refuses)
is not restarted in a loop.

engine.step_time_ms = 4000000 passes the daemon's configuration checks but the synthetic
backend refuses it when the rank initialises (it allows at most 3600000). The rank reports
init-failed and exits with 78 (EX_CONFIG). Checks: the supervisor says it will not restart the
rank, naming the fix; within 5 s no second process starts; /metrics counts init-failed once
and no restart; /health answers 503 and names the missing ranks; requests get a clear 503.
"""

import time

import faults
from harness import Daemon, check, check_eq, check_log_clean, log, post_json, run_test


def main() -> None:
    config = {"data_parallel": {"size": 1}, "engine": {"step_time_ms": 4000000.0},
              "supervision": {"restart_backoff": 0.1}}
    with Daemon(config, name="fault-init") as d:
        check(d.wait_log(r"rank 0 will not be restarted: it exited with status 78", 15),
              "the supervisor will not restart the rank (exit 78)", d.log_text()[-2000:])
        first = d.known_rank_pids()
        time.sleep(5.0)
        d.ranks()
        starts = d.log_text().count("rank 0 started")
        check_eq(starts, 1, "the rank was started once, not in a loop")
        events = faults.rank_events(d.port)
        log(f"  events: {events}")
        check_eq(events.get((0, "init-failed")), 1, "init-failed counted once")
        check(not events.get((0, "restarted")), "no restart counted", events)
        h = faults.health(d.port)
        check(h and h.get("status") == "unavailable" and any("rank 0" in m for m in h.get("missing", [])),
              "/health: unavailable, rank 0 named as missing", h)
        status, body = post_json(d.port, "/v1/completions", {"prompt": "x", "max_tokens": 2}, timeout=10)
        check(status == 503 and body["error"]["code"] == "no-ready-rank", "a request gets a clear 503", (status, body))
        check(d.running(), "the daemon keeps running (an operator fixes the setting)", first)
        check_eq(d.stop(), 0, "exit status after SIGTERM")
        check_log_clean(d)


if __name__ == "__main__":
    run_test(main, timeout=60)
