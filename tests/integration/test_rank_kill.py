"""Acceptance 3: a rank process killed with SIGKILL while it serves requests.

DP=4, each engine step takes 20 ms, so 40 concurrent requests of 150 tokens (half streaming)
last ~3 s. Mid-run, rank 1 gets SIGKILL. Checks: the daemon logs the rank and "killed by
signal KILL"; requests on the other ranks complete with the right text; streams that were on
rank 1 (their clients had events) end quickly with a clear error (an SSE error event naming
the rank, then [DONE]); plain requests that were on rank 1 had sent nothing back, so they move
to another rank and complete; no request hangs; /health then reports
ready_ranks 3 and new requests still succeed.
"""

import os
import signal
import time

import faults
from harness import Daemon, check, check_eq, get, log, run_test, slow_factor

DP = 4
VICTIM = 1


def main() -> None:
    # The supervisor restarts a dead rank after supervision.restart_backoff; put that beyond
    # this test so that the state after the loss can be observed (restarts have tests of their own).
    config = {"data_parallel": {"size": DP}, "engine": {"step_time_ms": 20.0, "max_batch": 64},
              "supervision": {"restart_backoff": 120.0, "restart_backoff_max": 120.0}}
    with Daemon(config, name="rank-kill") as d:
        d.wait_ready(30)
        ranks = d.ranks()
        check_eq(sorted(ranks), list(range(DP)), "rank processes")
        victim_pid = ranks[VICTIM]

        calls = faults.start_kill_mix(d.port, VICTIM)

        log(f"SIGKILL to rank {VICTIM} (pid {victim_pid})")
        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)

        ok, lost = faults.judge_kill_mix(calls, VICTIM)
        check(1 <= len(lost) <= len(calls) // DP, f"between 1 and {len(calls) // DP} requests were lost with rank {VICTIM}",
              len(lost))
        # A stream has sent its client events: it cannot move, and ends with an SSE error event
        # + [DONE]. A plain request has sent nothing until it is complete: it moves to another
        # rank, once, and completes there.
        check(lost and all(c.stream for c in lost), "only streams were lost (an SSE error event + [DONE])",
              [c.i for c in lost])
        moved = d.wait_log(rf"moved (\d+) request\(s\) that had not started from rank {VICTIM}", 5)
        check(moved and int(moved.group(1)) >= 1, "the victim's plain requests moved to other ranks", d.log_text()[-2000:])
        check_eq(len(ok), len(calls) - len(lost), "every other request completed, the moved ones too")
        example = lost[0]
        log(f"  example error: HTTP {example.status} {example.result}")
        latest = max(c.ended for c in lost) - killed_at
        check(latest < 1.0 * slow_factor(), f"the lost requests failed quickly (latest {latest:.2f} s after the kill)")
        earliest_ok = min(c.ended for c in ok) - killed_at
        check(earliest_ok > latest, f"... before any surviving request completed ({earliest_ok:.2f} s after the kill)")

        m = d.wait_log(rf"rank {VICTIM} \(pid {victim_pid}\) killed by signal KILL", 5)
        check(m, f"the log says 'rank {VICTIM} (pid {victim_pid}) killed by signal KILL'", d.log_text()[-2000:])

        status, health = get(d.port, "/health")
        check(status == 200 and health.get("ready_ranks") == DP - 1 and health.get("ranks") == DP,
              f"/health: ready_ranks {DP - 1} of {DP}", (status, health))
        alive = d.ranks()
        check_eq(sorted(alive), [r for r in range(DP) if r != VICTIM], "rank processes still running")

        after = faults.fresh_requests_succeed(d.port, 12)
        check(all(after), "12 new requests after the kill all succeed", after)

        check_eq(d.stop(), 0, "exit status after SIGTERM")
        check(not d.tagged_processes(), "no process of the daemon remains")


if __name__ == "__main__":
    run_test(main, timeout=120)
