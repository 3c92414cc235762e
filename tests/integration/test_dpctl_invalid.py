"""dpctl with invalid arguments, with requests the daemon refuses, and with no daemon.

1. Command-line mistakes exit 2 before any bus call (dpctl is pointed at a bus address where
   nothing listens: a bus call would exit 3): unknown command or option, a RANK that is not a
   number (negative, fractional, too big, empty), missing or extra arguments.
2. DP=4 on a private system bus. Refused as invalid (exit 5, the daemon's message): a rank out
   of range for every rank verb; drain and undrain of a stopped rank; stopping a stopped rank;
   starting a running one. `dpctl stop 3` and `dpctl start 3` work in between. The daemon
   keeps running and serving completions throughout (run under ASan in the sanitizer build,
   where any memory error fails the daemon and so the test).
3. Not running: with the daemon stopped, `dpctl status` and `dpctl stop 1` exit 3 and say
   how to start it; with no bus at all, exit 3 and say the bus is unreachable.
"""

import os

from busharness import SystemBus, dpctl, dpctl_json, rank_by_number, wait_for_name
from harness import Daemon, check, check_eq, check_in, check_serves, run_test

DP = 4
NOT_RUNNING = ("dpengined is not running (org.dpengine1 is not on the system bus); "
               "start it with 'systemctl start dpengined'")


def command_line_mistakes(nowhere: dict) -> None:
    cases = [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["--bogus", "status"], "unknown option '--bogus'"),
        (["ranks", "extra"], "takes no arguments"),
        (["status", "extra"], "takes no arguments"),
        (["stop"], "takes exactly one RANK"),
        (["stop", "1", "2"], "takes exactly one RANK"),
        (["stop", "abc"], "'abc' is not a rank"),
        (["drain", "-1"], "unknown option '-1'"),
        (["drain", "--", "-1"], "'-1' is not a rank"),
        (["restart", "1.5"], "'1.5' is not a rank"),
        (["start", "4294967296"], "'4294967296' is not a rank"),
        (["undrain", ""], "'' is not a rank"),
        (["undrain", "0x1"], "'0x1' is not a rank"),
        (["logs", "two"], "'two' is not a rank"),
        (["stop-node", "0"], "takes no arguments"),
        (["--timeout", "soon", "stop", "1"], "--timeout: 'soon' is not a number"),
        (["--timeout"], "--timeout needs a value"),
        (["-n", "x", "logs", "1"], "--lines: 'x' is not a number"),
        (["version", "now"], "version takes no arguments"),
    ]
    for argv, message in cases:
        r = dpctl(None, *argv, env=nowhere)
        check_eq(r.returncode, 2, f"dpctl {argv}: exit status (no bus call made)")
        check_in(message, r.stderr, f"dpctl {argv}: message")
        check_eq(r.stdout, "", f"dpctl {argv}: nothing on stdout")


def main() -> None:
    with SystemBus() as bus:
        nowhere = {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={os.path.join(bus.tmp, 'no-bus-here')}"}
        command_line_mistakes(nowhere)

        with Daemon({"data_parallel": {"size": DP}}, env=bus.env, name="invalid") as d:
            d.wait_ready(30)
            check(wait_for_name(bus, 10), "org.dpengine1 is on the bus")
            for verb in ("start", "stop", "restart", "drain", "undrain"):
                r = dpctl(bus, verb, "99")
                check_eq(r.returncode, 5, f"dpctl {verb} 99: exit status")
                check_in("dpctl: rank 99 does not exist: the DP size is 4", r.stderr, f"dpctl {verb} 99: message")
            check_serves(d, "after out-of-range ranks")

            r = dpctl(bus, "stop", "3")
            check_eq(r.returncode, 0, "dpctl stop 3")
            r3 = rank_by_number(dpctl_json(bus, "ranks"))[3]
            check_eq((r3["state"], r3["pid"]), ("stopped", 0), "rank 3 stopped, no process, when stop returns")
            check(3 not in d.ranks(), "rank 3's process is gone", d.ranks())
            for verb, message in (("drain", "rank 3 is stopped, not ready"), ("undrain", "rank 3 is stopped, not draining"),
                                  ("stop", "rank 3 is not running")):
                r = dpctl(bus, verb, "3")
                check_eq(r.returncode, 5, f"dpctl {verb} 3 (stopped): exit status")
                check_in(message, r.stderr, f"dpctl {verb} 3 (stopped): message")
            r = dpctl(bus, "start", "0")
            check_eq(r.returncode, 5, "dpctl start 0 (running): exit status")
            check_in("rank 0 is already running", r.stderr, "dpctl start 0 (running): message")
            check_serves(d, "with rank 3 stopped, after refused requests")

            r = dpctl(bus, "start", "3")
            check_eq(r.returncode, 0, "dpctl start 3")
            st = dpctl_json(bus, "status")
            check_eq((st["ready_ranks"], rank_by_number(st)[3]["state"]), (DP, "ready"), "rank 3 ready again")
            check_eq(rank_by_number(st)[3]["pid"], d.ranks().get(3), "rank 3's pid is its new process")
            r = dpctl(bus, "undrain", "1")
            check_eq(r.returncode, 0, "dpctl undrain of a ready rank is a no-op")
            check_serves(d, "at the end")

            d.stop()
            check_eq(d.returncode, 0, "dpengined stops cleanly (exit status 0)")
            for argv in (["status"], ["stop", "1"], ["ranks", "--json"]):
                r = dpctl(bus, *argv)
                check_eq(r.returncode, 3, f"dpctl {' '.join(argv)} with the daemon stopped: exit status")
                check_in(NOT_RUNNING, r.stderr, f"dpctl {' '.join(argv)} with the daemon stopped: message")

        r = dpctl(None, "status", env=nowhere)
        check_eq(r.returncode, 3, "dpctl status with no bus: exit status")
        check_in(f"cannot connect to the system bus at {nowhere['DBUS_SYSTEM_BUS_ADDRESS']}", r.stderr,
                 "dpctl status with no bus: message")


if __name__ == "__main__":
    run_test(main, timeout=120)
