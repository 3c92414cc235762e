"""A frozen head as its local ranks see it: no key is involved, so no key is blamed.

DP=2 on one node (ipc://, no CURVE). The head daemon alone is stopped (SIGSTOP) for 12 s:
ZeroMQ's connection heartbeat (5 s) drops the ranks' connections, and their reconnections
wait in the kernel's backlog until the ZMTP handshake limit (5 s) fails them. Checks: the
ranks log the failed handshake as a head that did not answer, never with "check
security.head_public_key" (that hint is for CURVE, where a wrong key looks the same); after
SIGCONT the head does not kill them for the connections its freeze cost them: they register
again and serve with the same processes.
"""

import re
import signal
import time

import faults
from harness import Daemon, check, check_eq, check_log_clean, check_serves, log, run_test, slow_factor, wait_until

FREEZE = 12.0


def main() -> None:
    with Daemon(faults.local_config(), name="head-frozen") as d:
        d.wait_ready(30)
        before = d.ranks()
        mark = len(d.log_text())
        faults.signal_pid(d.pid, signal.SIGSTOP)
        try:
            failed = wait_until(lambda: re.search(r"rank \d: warning: handshake with the head at ipc://\S+ failed",
                                                  d.log_text()[mark:]), FREEZE * slow_factor(), 0.2)
            time.sleep(1.0)  # the other rank's line, too
        finally:
            faults.signal_pid(d.pid, signal.SIGCONT)
        since = d.log_text()[mark:]
        lines = [l for l in since.splitlines() if "handshake with the head" in l]
        log("  " + "\n  ".join(lines))
        check(failed, "a rank logs the failed handshake with the frozen head", since[-2000:])
        check(all("did not answer in time" in l for l in lines), "the line says the head did not answer", lines)
        check("head_public_key" not in since, "no hint at security.head_public_key without CURVE", lines)
        # The ranks' connections were dropped during the freeze: the head must not kill them
        # for it (their loss shows within a heartbeat timeout); they register again.
        time.sleep(2 * 1.5 * slow_factor())
        check(faults.wait_ready_ranks(d.port, 2, 30), "both ranks are ready again after SIGCONT")
        check_eq(d.ranks(), before, "the same rank processes (none was killed for the head's freeze)")
        check(not any(reason == "restarted" for _, reason in faults.rank_events(d.port)), "no rank was restarted")
        check_serves(d, "after the freeze")
        check_eq(d.stop(), 0, "exit status after SIGTERM")
        check_log_clean(d)


if __name__ == "__main__":
    run_test(main, timeout=120)
