"""Fault tolerance: the whole machine stalls (a hypervisor pause, memory pressure) for longer
than handshake.heartbeat_timeout: the head daemon and its ranks are all stopped (SIGSTOP),
then thawed (SIGCONT), the head first and its ranks 0.2 s later, as after a real stall the
head's deadline check runs before the ranks' first heartbeats arrive. A head whose own loop
was late by more than a heartbeat interval must not blame its ranks for that time: no rank is
declared lost, none is killed or restarted, and requests keep being served.

DP=2 on one node, heartbeat_interval 0.3 s, heartbeat_timeout 1.5 s, a stall of 3.5 s (less
than ZeroMQ's own 5 s connection heartbeat, so the connections stay up), under a light load.
Checks: no heartbeat-timeout or other loss for either rank, the same rank processes, no "went
silent" line, a [head-stalled] notice, the load accounted for (every request completed or got
a clear error) and fresh requests served.
"""

import signal
import time

import faults
from harness import Daemon, check, check_eq, check_log_clean, check_serves, log, run_test, slow_factor

STALL = 3.5


def main() -> None:
    with Daemon(faults.local_config(), name="head-stall") as d:
        d.wait_ready(30)
        before = d.ranks()
        with faults.Load(d.port, clients=4, max_tokens=16) as load:
            check(load.wait_ok(10, 30), "the load is served before the stall")
            machine = [d.pid, *before.values()]
            for pid in machine:
                faults.signal_pid(pid, signal.SIGSTOP)
            try:
                time.sleep(STALL)
                faults.signal_pid(d.pid, signal.SIGCONT)
                time.sleep(0.2)
            finally:
                for pid in machine:
                    try:
                        faults.signal_pid(pid, signal.SIGCONT)
                    except ProcessLookupError:  # a rank the head killed: the check below says so
                        log(f"  (pid {pid} is gone)")
            # Give a wrong verdict time to show: several heartbeat timeouts after the thaw.
            time.sleep(3 * 1.5 * slow_factor())
            check(load.wait_ok(10, 30), "the load is served after the stall")
        faults.check_accounting(load.report, "a stall of the head")
        events = faults.rank_events(d.port)
        log(f"  events: {events}")
        losses = {(r, reason): n for (r, reason), n in events.items() if reason in faults.LOSS_REASONS}
        check(not losses, "no rank was declared lost", losses)
        check(not any(reason == "restarted" for _, reason in events), "no rank was restarted", events)
        check_eq(d.ranks(), before, "the same rank processes serve")
        check("went silent" not in d.log_text(), "no rank is said to have gone silent")
        check(d.wait_log(r"notice: this daemon did not run for \d+\.\d s .*\[head-stalled\]", 5),
              "the head logs its own stall as a notice")
        check_serves(d, "after the stall")
        check_eq(d.stop(), 0, "exit status after SIGTERM")
        check_log_clean(d)


if __name__ == "__main__":
    run_test(main, timeout=120)
