"""No bus, a late bus, a bus restart: inference never stops, the service comes back by itself.

dpengined (DP=2) starts with DBUS_SYSTEM_BUS_ADDRESS naming a socket where no bus listens: it
becomes ready, serves HTTP and logs a warning. Two client threads send completions for the
whole test. Then a private dbus-daemon starts at that address: org.dpengine1 appears within a
few seconds (the daemon retries in the background) and `dpctl status` works. The dbus-daemon
is killed (SIGKILL) and started again at the same address: the daemon logs the loss,
reconnects, and `dpctl status` and `dpctl restart 0` work over the new bus. No request failed
at any point, and requests completed in every phase.
"""

import time

import faults
from busharness import SystemBus, dpctl, dpctl_json, wait_for_name
from harness import Daemon, check, check_eq, log, run_test

DP = 2
RECONNECT_S = 8.0  # the daemon retries every 2 s; allow for a slow machine


def start_bus(bus: SystemBus, which: str) -> None:
    """Starts the bus; the daemon must come onto it by itself and answer dpctl there."""
    bus.start()
    start = time.monotonic()
    check(wait_for_name(bus, RECONNECT_S), f"org.dpengine1 appears on {which}")
    log(f"  org.dpengine1 appeared {time.monotonic() - start:.1f} s after {which} started")
    check_eq(dpctl_json(bus, "status")["ready_ranks"], DP, f"dpctl status over {which}")


def flowing(load: faults.Load, what: str) -> None:
    check(load.wait_ok(10, 20), f"requests complete {what}", load.completed_ok())


def main() -> None:
    bus = SystemBus(start=False)
    with bus:
        config = {"data_parallel": {"size": DP}, "engine": {"step_time_ms": 2.0}}
        with Daemon(config, env=bus.env, name="reconnect") as d:
            d.wait_ready(30)
            check(d.wait_log(r"warning: D-Bus: cannot connect to the system bus", 5),
                  "the daemon warns that there is no bus", d.log_text())
            load = faults.Load(d.port, clients=2, max_tokens=4, client_timeout=30, pause=0.01, streams=False)
            with load:
                flowing(load, "without a bus")
                r = dpctl(bus, "status")
                check_eq(r.returncode, 3, "dpctl status without a bus: exit status")

                # A bus appears.
                start_bus(bus, "the late bus")
                check(d.wait_log(r"D-Bus: serving org\.dpengine1", 5), "the daemon logs that it serves the bus")
                flowing(load, "with the bus up")

                # The bus dies and comes back.
                bus.stop(sig=9)
                check(d.wait_log(r"D-Bus: connection lost", 10), "the daemon notices the lost bus", d.log_text())
                flowing(load, "while the bus is down")
                r = dpctl(bus, "status")
                check_eq(r.returncode, 3, "dpctl status while the bus is down: exit status")
                start_bus(bus, "the restarted bus")
                r = dpctl(bus, "restart", "0", timeout=60)
                check_eq(r.returncode, 0, "dpctl restart 0 over the restarted bus")
                check_eq(dpctl_json(bus, "status")["ranks"][0]["restarts"], 1, "rank 0 restarted once")
                flowing(load, "after the bus restart")
            failures = load.report.failures()
            log(f"  {load.report.counts()['ok']} requests completed, {len(failures)} failed")
            check(not failures, "no request failed", failures[:5])
            check(d.running(), "the daemon is still running")


if __name__ == "__main__":
    run_test(main, timeout=120)
