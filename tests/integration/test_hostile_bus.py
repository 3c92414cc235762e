"""Hostile bus callers: every method of org.dpengine1 called with wrong types, out-of-range
values, extra arguments and huge strings, as root and as nobody: each call gets InvalidArgs,
InvalidRank or AccessDenied (never a crash, never a change), and afterwards the daemon serves,
its ranks are untouched, and its memory and fds are back to their baseline.

DP=2 on a private system bus with the shipped policy. Calls go through dbus-send (which prints
the error's name). For root, whose calls the bus lets through: a wrong signature is refused by
the daemon's bus library with InvalidArgs before any of our code runs; a well-typed rank out of
range gets InvalidRank naming the DP size. For nobody (setpriv): the changing methods are
refused with AccessDenied (by the policy), and the read-only ones with InvalidArgs. Properties:
reading an unknown one and writing a read-only one fail; unknown rank objects are unknown.
Run under ASan in the sanitizer build, where any memory error kills the daemon and so fails
the test.
"""

from busharness import MANAGER_INTERFACE, MANAGER_PATH, NOBODY, SERVICE, SystemBus, run, wait_for_name
from harness import Daemon, Footprint, check, check_eq, check_serves, log, run_test

DP = 2
RANK_METHODS = ["StartRank", "StopRank", "RestartRank", "DrainRank", "UndrainRank"]
NODE_METHODS = ["StopNode", "StartNode", "Reload"]
HUGE = "x" * 100_000  # close to the kernel's limit on one argument

INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"
INVALID_RANK = "org.dpengine1.Error.InvalidRank"
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"

WRONG_TYPES = [["string:0"], ["int32:-1"], ["uint64:18446744073709551615"], ["uint32:1", "uint32:2"],
               [f"string:{HUGE}"], ["array:string:" + ",".join(["a"] * 5000)], ["double:1e308"],
               ["objpath:/org/dpengine1"], ["boolean:true"]]
OUT_OF_RANGE = [["uint32:4294967295"], [f"uint32:{DP}"], ["uint32:65536"]]


def call(method: str, args: list[str], user, path: str = MANAGER_PATH, interface: str = MANAGER_INTERFACE):
    return run(["dbus-send", "--system", "--print-reply", f"--dest={SERVICE}", path, f"{interface}.{method}", *args],
               env=BUS.env, user=user)


def expect_error(method: str, args: list[str], user, errors: tuple, **kw) -> None:
    r = call(method, args, user, **kw)
    shown = " ".join(a if len(a) < 40 else a[:30] + "…" for a in args)
    who = "root" if user is None else "nobody"
    check(r.returncode != 0 and any(f"Error {e}" in r.stderr for e in errors),
          f"{method}({shown}) as {who}: one of {errors}", (r.returncode, r.stdout[:200], r.stderr[:300]))


def hostile_calls(user) -> None:
    changing_denied = (ACCESS_DENIED,) if user is not None else None
    for method in RANK_METHODS:
        for args in [[]] + WRONG_TYPES:
            expect_error(method, args, user, changing_denied or (INVALID_ARGS,))
        for args in OUT_OF_RANGE:
            expect_error(method, args, user, changing_denied or (INVALID_RANK,))
    for method in NODE_METHODS:
        for args in [["uint32:0"], [f"string:{HUGE}"], ["int32:-1", "string:x"]]:
            expect_error(method, args, user, changing_denied or (INVALID_ARGS,))
    for method in ("ListRanks", "ListRankActivity"):
        for args in [["uint32:0"], [f"string:{HUGE}"], ["array:string:" + ",".join(["a"] * 5000)]]:
            expect_error(method, args, user, (INVALID_ARGS,))
    props = "org.freedesktop.DBus.Properties"
    expect_error("Get", [f"string:{MANAGER_INTERFACE}", "string:NoSuchProperty"], user,
                 ("org.freedesktop.DBus.Error.UnknownProperty", INVALID_ARGS), interface=props)
    expect_error("Get", [f"string:{HUGE}", f"string:{HUGE}"], user,
                 ("org.freedesktop.DBus.Error.UnknownInterface", "org.freedesktop.DBus.Error.UnknownProperty",
                  INVALID_ARGS), interface=props)
    expect_error("Set", [f"string:{MANAGER_INTERFACE}", "string:DPSize", "variant:uint32:5"], user,
                 ("org.freedesktop.DBus.Error.PropertyReadOnly", ACCESS_DENIED), interface=props)
    expect_error("Set", [f"string:{MANAGER_INTERFACE}", "string:DPSize", "variant:string:five"], user,
                 ("org.freedesktop.DBus.Error.PropertyReadOnly", INVALID_ARGS, ACCESS_DENIED), interface=props)
    expect_error("GetAll", ["uint32:7"], user, (INVALID_ARGS,), interface=props)
    for path in (f"{MANAGER_PATH}/rank/{DP}", f"{MANAGER_PATH}/rank/4294967295", f"{MANAGER_PATH}/rank/x",
                 f"{MANAGER_PATH}/rank/0/deeper"):
        expect_error("GetAll", ["string:org.dpengine1.Rank"], user,
                     ("org.freedesktop.DBus.Error.UnknownObject", "org.freedesktop.DBus.Error.UnknownInterface",
                      "org.freedesktop.DBus.Error.UnknownMethod"), path=path, interface=props)


def main() -> None:
    global BUS
    with SystemBus() as bus:
        BUS = bus
        with Daemon({"data_parallel": {"size": DP}}, env=bus.env, name="hostile-bus") as d:
            d.wait_ready(30)
            check(wait_for_name(bus, 10), "org.dpengine1 is on the bus")
            pids = d.ranks()
            check_serves(d, "before the calls")
            baseline = Footprint(d.pid)
            log(f"baseline: {baseline}")
            for user in (None, NOBODY):
                log(f"as {'root' if user is None else 'nobody'}:")
                hostile_calls(user)
                check_serves(d, f"after the calls as {'root' if user is None else 'nobody'}")
            check_eq(d.ranks(), pids, "the same rank processes serve (nothing was stopped or restarted)")
            r = call("ListRanks", [], None)
            check(r.returncode == 0 and r.stdout.count("struct {") == DP, "ListRanks still answers with every rank",
                  r.stdout[:500])
            baseline.check_returned("after every hostile call", rss_slack=16 << 20)
            check_eq(d.stop(), 0, "exit status after SIGTERM")
            text = d.log_text()
            check("AddressSanitizer" not in text and "runtime error:" not in text, "no sanitizer reports in the log")


BUS = None

if __name__ == "__main__":
    run_test(main, timeout=240)
