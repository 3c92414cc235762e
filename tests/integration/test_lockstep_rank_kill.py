"""Lockstep mode: a rank killed with SIGKILL in the middle of a run.

DP=4 in lockstep with a gloo group, 20 ms per step, 40 concurrent requests of 150 tokens (half
streaming). Rank 1 gets SIGKILL mid-run. Checks: the other ranks' collective fails (their
log says so; data_parallel.group_timeout bounds it, so nothing hangs), the head re-forms the
group without rank 1 under a new epoch, the supervisor restarts rank 1 and the group re-forms
with all four (epoch again higher, every rank reporting it); every request either completes
with exactly the right text or fails with rank 1's clear error (a stream's text is a prefix of
the expected text, once: nothing is answered twice); new requests then succeed.
"""

import os
import signal

import faults
from harness import Daemon, check, check_eq, dp_group_epochs, log, per_rank_metric, run_test, wait_until

DP = 4
VICTIM = 1


def main() -> None:
    config = {"data_parallel": {"size": DP, "dp_sync": "lockstep", "group_timeout": 1.0},
              "engine": {"step_time_ms": 20.0, "max_batch": 64},
              "supervision": {"restart_backoff": 1.0}}
    with Daemon(config, name="lockstep-kill") as d:
        d.wait_ready(30)
        full = wait_until(lambda: [e for e, m in dp_group_epochs(d) if m == list(range(DP))], 30)
        check(full, "the head forms the group of all four ranks", d.log_text()[-3000:])
        ranks = d.ranks()
        victim_pid = ranks[VICTIM]

        # The same request mix and outcome rules as the independent-mode kill test.
        calls = faults.start_kill_mix(d.port, VICTIM)
        epoch_before = max(e for e, _ in dp_group_epochs(d))

        log(f"SIGKILL to rank {VICTIM} (pid {victim_pid}) during the lockstep run")
        os.kill(victim_pid, signal.SIGKILL)

        failed = d.wait_log(r"rank [023] .*DP group epoch \d+ failed|DP group epoch \d+ failed", 20)
        check(failed, "the other ranks' collective fails (no hang)", d.log_text()[-3000:])

        def reformed(members: list[int]):
            return [e for e, m in dp_group_epochs(d) if e > epoch_before and m == members]

        survivors = [r for r in range(DP) if r != VICTIM]
        check(wait_until(lambda: reformed(survivors), 20), f"the group re-forms with ranks {survivors}",
              d.log_text()[-3000:])

        _, lost = faults.judge_kill_mix(calls, VICTIM)
        check(len(lost) <= len(calls) // DP, f"at most rank {VICTIM}'s share of the requests was lost", len(lost))
        if lost:
            log(f"  example error: {lost[0].outcome()[1]}")

        # The supervisor restarts rank 1; the group then re-forms with all four ranks.
        rejoined = wait_until(lambda: [e for e in reformed(list(range(DP))) if e > min(reformed(survivors))], 40)
        check(rejoined, "the group re-forms with all four ranks after the restart", d.log_text()[-3000:])
        latest = max(rejoined)

        def all_report_latest():
            epochs = per_rank_metric(d.port, "dpengine_rank_group_epoch")
            return len(epochs) == DP and all(e >= latest for e in epochs.values())
        check(wait_until(all_report_latest, 20, 0.3), f"every rank reports group epoch {latest}",
              per_rank_metric(d.port, "dpengine_rank_group_epoch"))

        after = faults.fresh_requests_succeed(d.port, 8)
        check(all(after), "new requests after the group re-formed all succeed", after)
        log("  the group's history in the log:\n    " + "\n    ".join(
            line for line in d.log_text().splitlines() if "DP group" in line))
        check_eq(d.stop(), 0, "exit status after SIGTERM")


if __name__ == "__main__":
    run_test(main, timeout=150)
