"""handshake.register_timeout closes connections that never register, and only those.

The head learns of each accepted connection from libzmq's monitor, on a socket of its own,
and of the connection's HELLO on the rank port; the two can be read in either order. Here 16
local ranks register at once, at start-up and again after 8 of them are killed together, with
register_timeout = 1 s: each time, once three timeouts have passed, no rank has lost its
connection, none is counted as registration-timeout, and the same processes serve.
"""

import os
import signal
import time

from harness import Daemon, check, check_eq, get, log, run_test, slow_factor, wait_until

DP = 16
REGISTER_TIMEOUT = 1.0


def registration_timeouts(d: Daemon) -> int:
    status, body = get(d.port, "/metrics")
    check_eq(status, 200, "/metrics answers")
    for line in body.splitlines():
        if line.startswith('dpengine_handshake_refusals_total{reason="registration-timeout"}'):
            return int(float(line.split()[-1]))
    return 0


def check_kept(d: Daemon, ranks: dict[int, int], when: str) -> None:
    time.sleep(3 * REGISTER_TIMEOUT + 0.5)
    check_eq(registration_timeouts(d), 0, f"{when}: no registered connection counted as registration-timeout")
    check("registration-timeout" not in d.log_text(), f"{when}: no registration-timeout in the log",
          [line for line in d.log_text().splitlines() if "registration-timeout" in line][:2])
    check("lost the connection to the head" not in d.log_text(), f"{when}: no rank lost its connection")
    check_eq(d.ranks(), ranks, f"{when}: the same rank processes serve")
    check_eq(get(d.port, "/health")[0], 200, f"{when}: /health is ok")


def main() -> None:
    config = {"data_parallel": {"size": DP}, "handshake": {"register_timeout": REGISTER_TIMEOUT},
              "supervision": {"restart_backoff": 0.1, "restart_budget": 100}}
    with Daemon(config, name="registered") as d:
        d.wait_ready(60 * slow_factor())
        ranks = d.ranks()
        check_eq(sorted(ranks), list(range(DP)), "16 rank processes")
        check_kept(d, ranks, "after start-up")

        victims = list(range(0, DP, 2))
        for rank in victims:
            os.kill(ranks[rank], signal.SIGKILL)
        log(f"SIGKILL to ranks {victims}")
        back = wait_until(lambda: sorted(d.ranks()) == list(range(DP)) and
                          all(d.ranks()[r] != ranks[r] for r in victims) and
                          get(d.port, "/health")[1].get("ready_ranks") == DP, 60 * slow_factor(), 0.2)
        check(back, "the killed ranks are restarted and all 16 are ready", get(d.port, "/health"))
        check_kept(d, d.ranks(), "after the restarts")
        check_eq(d.stop(), 0, "clean exit")


if __name__ == "__main__":
    run_test(main, timeout=180)
