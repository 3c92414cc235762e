"""An operator's drain holds until undrain, also across the rank's restarts.

DP=2 on one node, a light load throughout. `dpctl drain 1`, then rank 1's process is killed
(SIGKILL). Checks: the supervisor starts a new process, which comes back `draining`, not
`ready`, and gets no requests (Served stays put while rank 0 serves the load); `dpctl restart
1` on the drained rank returns 0 and it comes back `draining` again; `dpctl undrain 1` makes it
`ready`, and it serves again. No request fails at any point: the drained rank had none in
flight when it was killed.
"""

import signal

import faults
from busharness import SystemBus, dpctl, dpctl_json, rank_by_number, wait_for_name
from harness import Daemon, check, check_eq, run_test, slow_factor, wait_until


def rank1(bus) -> dict:
    return rank_by_number(dpctl_json(bus, "ranks"))[1]


def main() -> None:
    with SystemBus() as bus:
        config = faults.local_config({"engine": {"step_time_ms": 5.0}})
        with Daemon(config, env=bus.env, name="drain-restart") as d:
            d.wait_ready(30)
            check(wait_for_name(bus, 10), "org.dpengine1 is on the bus")
            with faults.Load(d.port, clients=4, max_tokens=8, streams=False) as load:
                check(load.wait_ok(10, 20), "requests flow")
                check_eq(dpctl(bus, "drain", "1", timeout=60).returncode, 0, "dpctl drain 1 exit status")
                first_pid = d.ranks()[1]

                faults.signal_pid(first_pid, signal.SIGKILL)
                back = wait_until(lambda: (r := rank1(bus))["pid"] not in (0, first_pid) and r["state"] in
                                  ("ready", "draining") and r, 30 * slow_factor(), 0.2)
                check(back, "rank 1 runs again as a new process", rank1(bus))
                check_eq(back["state"], "draining", "the restarted rank 1 is still drained")
                check_eq(back["restarts"], 1, "rank 1 Restarts")
                served = back["served"]
                check(load.wait_ok(30, 30), "30 more requests served meanwhile")
                r = rank1(bus)
                check_eq((r["state"], r["served"], r["in_flight"]), ("draining", served, 0),
                         "the drained rank 1 got no new requests (state, Served, InFlight)")

                check_eq(dpctl(bus, "restart", "1", timeout=120).returncode, 0,
                         "dpctl restart 1 of a drained rank exit status")
                r = rank1(bus)
                check_eq((r["state"], r["restarts"]), ("draining", 2), "after dpctl restart: draining, Restarts 2")

                check_eq(dpctl(bus, "undrain", "1").returncode, 0, "dpctl undrain 1 exit status")
                check_eq(rank1(bus)["state"], "ready", "rank 1 is ready after undrain")
                check(wait_until(lambda: rank1(bus)["served"] > served, 20 * slow_factor(), 0.2),
                      "rank 1 serves again after undrain")
            failures = load.report.failures()
            check(not failures, "no request failed (rank 1 had none in flight when it was killed)", failures[:5])
            check_eq(d.stop(), 0, "exit status after SIGTERM")


if __name__ == "__main__":
    run_test(main, timeout=180)
