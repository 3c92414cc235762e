"""Lockstep mode: a rank that stalls (SIGSTOP) instead of dying.

DP=4 in lockstep, 20 ms per step, a stream on every rank. Rank 2 gets SIGSTOP: its TCP
connections stay open, so only data_parallel.group_timeout (1 s here) ends the other ranks'
collective. Checks: their log names the timeout (no hang), the head declares the silent rank
lost (heartbeat timeout) and re-forms the group of the three others under a new epoch; the
supervisor replaces the stopped process and the group re-forms with all four; every request
completes with the right text or fails with a clear error naming rank 2.
"""

import os
import signal
import threading

from harness import (Daemon, check, dp_group_epochs, log, run_test, slow_factor, stream_errors, stream_sse_full,
                     stream_text, synthetic_completion, wait_until)

DP = 4
VICTIM = 2
MAX_TOKENS = 200


def main() -> None:
    config = {"data_parallel": {"size": DP, "dp_sync": "lockstep", "group_timeout": 1.0},
              "engine": {"step_time_ms": 20.0},
              "supervision": {"restart_backoff": 0.5}}
    with Daemon(config, name="lockstep-stall") as d:
        d.wait_ready(30)
        check(wait_until(lambda: [e for e, m in dp_group_epochs(d) if m == list(range(DP))], 30),
              "the head forms the group of all four ranks")
        victim_pid = d.ranks()[VICTIM]
        results: dict[int, object] = {}
        started = [threading.Event() for _ in range(DP * 2)]

        def one(i: int) -> None:
            body = {"prompt": f"stall test {i}", "max_tokens": MAX_TOKENS, "seed": i, "stream": True}
            results[i] = stream_sse_full(d.port, "/v1/completions", body, timeout=60,
                                         on_event=lambda _ev: started[i].set())

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(DP * 2)]
        for t in threads:
            t.start()
        check(all(e.wait(10 * slow_factor()) for e in started), "every stream produced its first token")
        epoch_before = max(e for e, _ in dp_group_epochs(d))

        log(f"SIGSTOP to rank {VICTIM} (pid {victim_pid})")
        os.kill(victim_pid, signal.SIGSTOP)
        try:
            timed_out = d.wait_log(r"DP group epoch \d+ failed: .*([Tt]imed out|[Tt]imeout)", 20)
            check(timed_out, "the other ranks' collective times out (no hang)",
                  "\n".join(l for l in d.log_text().splitlines() if "DP group" in l))
            survivors = [r for r in range(DP) if r != VICTIM]
            check(wait_until(lambda: [e for e, m in dp_group_epochs(d) if e > epoch_before and m == survivors], 30),
                  f"the group re-forms with ranks {survivors} once rank {VICTIM} is declared lost",
                  d.log_text()[-3000:])
        finally:
            try:
                os.kill(victim_pid, signal.SIGCONT)  # if the supervisor has not replaced it yet
            except ProcessLookupError:
                pass
        check(wait_until(lambda: [e for e, m in dp_group_epochs(d) if e > epoch_before and m == list(range(DP))], 40),
              "the group re-forms with all four ranks after the stalled rank was replaced", d.log_text()[-3000:])

        for t in threads:
            t.join(70)
        check(not any(t.is_alive() for t in threads), "no stream hangs")
        bad = []
        for i, s in sorted(results.items()):
            want = synthetic_completion(f"stall test {i}", i, MAX_TOKENS).text
            text = stream_text(s.events)
            errors = stream_errors(s.events)
            if s.status != 200 or not s.done:
                bad.append(f"{i}: HTTP {s.status}, done {s.done}")
            elif not errors and text != want:
                bad.append(f"{i}: wrong text {text!r}")
            elif errors and not (len(errors) == 1 and f"rank {VICTIM}" in errors[0].get("message", "")
                                 and want.startswith(text)):
                bad.append(f"{i}: unclear error {errors} after {text!r}")
        check(not bad, "every stream completed correctly or failed with an error naming the stalled rank", bad)
        log("  the group's history:\n    " + "\n    ".join(l for l in d.log_text().splitlines() if "DP group" in l))


if __name__ == "__main__":
    run_test(main, timeout=150)
