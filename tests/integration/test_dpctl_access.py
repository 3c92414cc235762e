"""Unprivileged dpctl: read-only verbs work, changes are refused and nothing changes.

1. A private system bus with the shipped policy; dpengined with DP=4. As nobody (setpriv,
   uid/gid 65534, no supplementary groups): `dpctl stop 0` and every other changing verb exit
   4 with the access-denied message; every rank is still ready with the same process and the
   daemon logged no drain or stop; `dpctl status`, `dpctl ranks` and `--json` work; a real
   user in group dpengine may drain and undrain.
2. The daemon's own check, without the policy's help: a bus whose policy lets everyone call
   org.dpengine1. As nobody, StopRank over dbus-send gets AccessDenied with the daemon's message
   and dpctl exits 4; the rank keeps running.
"""

import os
import shutil
import tempfile

from busharness import (DENIED_TO_OTHERS, NOBODY, SystemBus, busctl, dpctl, dpctl_json, group_member,
                        rank_by_number, run, wait_for_name)
from harness import Daemon, check, check_eq, check_in, log, run_test

DP = 4
CHANGING = [("stop", "0"), ("start", "0"), ("restart", "1"), ("drain", "1"), ("undrain", "1"), ("stop-node",),
            ("start-node",)]

PERMISSIVE_POLICY = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root"><allow own="org.dpengine1"/></policy>
  <policy context="default"><allow send_destination="org.dpengine1"/></policy>
</busconfig>
"""


def all_ready_with(bus: SystemBus, pids: dict[int, int], what: str) -> None:
    ranks = rank_by_number(dpctl_json(bus, "ranks"))
    check_eq({n: (r["state"], r["pid"], r["restarts"]) for n, r in ranks.items()},
             {n: ("ready", p, 0) for n, p in pids.items()}, what)


def shipped_policy() -> None:
    # The member first: dbus-daemon resolves the policy's group names when it starts.
    with group_member() as member, SystemBus() as bus:
        with Daemon({"data_parallel": {"size": DP}}, env=bus.env, name="access") as d:
            d.wait_ready(30)
            check(wait_for_name(bus, 10), "org.dpengine1 is on the bus")
            pids = d.ranks()
            for verb in CHANGING:
                r = dpctl(bus, *verb, user=NOBODY)
                check_eq(r.returncode, 4, f"dpctl {' '.join(verb)} as nobody: exit status")
                check_in(DENIED_TO_OTHERS, r.stderr, f"dpctl {' '.join(verb)} as nobody: message")
            all_ready_with(bus, pids, "nothing changed: every rank ready, same process, no restart")
            check("draining" not in d.log_text() and "stopping" not in d.log_text(),
                  "the daemon logged no drain or stop", d.log_text())

            r = dpctl(bus, "status", user=NOBODY)
            check_eq(r.returncode, 0, "dpctl status as nobody")
            check_in(f"Ready ranks: {DP}/{DP}", r.stdout, "dpctl status as nobody")
            check_in(f"{DP} ranks listed.", r.stdout, "dpctl status as nobody")
            r = dpctl(bus, "ranks", user=NOBODY)
            check_eq(r.returncode, 0, "dpctl ranks as nobody")
            st = dpctl_json(bus, "status", user=NOBODY)
            check_eq((st["ready_ranks"], len(st["ranks"])), (DP, DP), "dpctl --json status as nobody")
            check_eq({x["rank"]: x["pid"] for x in st["ranks"]}, pids, "nobody sees the rank pids")
            check_eq({x["group_kind"] for x in st["ranks"]}, {"none"},
                     "nobody sees the ranks' DP group (the policy opens ListRankActivity to everyone)")

            check_eq(dpctl(bus, "drain", "3", "--timeout", "20", user=member).returncode, 0,
                     "a member of the group 'dpengine' may drain a rank")
            check_eq(dpctl(bus, "undrain", "3").returncode, 0, "undrain 3")


def daemon_check() -> None:
    policy_dir = tempfile.mkdtemp(prefix="dpe-policy-")
    policy = os.path.join(policy_dir, "permissive.conf")
    with open(policy, "w", encoding="utf-8") as f:
        f.write(PERMISSIVE_POLICY)
    try:
        with SystemBus(policy_file=policy) as bus, Daemon({"data_parallel": {"size": 1}}, env=bus.env,
                                                       name="access-daemon-check") as d:
            d.wait_ready(30)
            check(wait_for_name(bus, 10), "org.dpengine1 is on the permissive bus")
            pids = d.ranks()
            # dbus-send prints the error's name and message (busctl words AccessDenied its own way).
            r = run(["dbus-send", "--system", "--print-reply", "--dest=org.dpengine1", "/org/dpengine1",
                     "org.dpengine1.Manager.StopRank", "uint32:0"], env=bus.env, user=NOBODY)
            log(f"  dbus-send StopRank 0 as nobody -> {r.returncode}: {r.stderr.strip()}")
            check(r.returncode != 0, "StopRank as nobody fails even where the bus policy lets it through")
            check_in("org.freedesktop.DBus.Error.AccessDenied: changing dpengine needs root or membership of the "
                     "group 'dpengine'", r.stderr, "the daemon's own AccessDenied error")
            r = dpctl(bus, "stop", "0", user=NOBODY)
            check_eq(r.returncode, 4, "dpctl stop 0 as nobody (refused by the daemon itself)")
            check_in(DENIED_TO_OTHERS, r.stderr, "dpctl stop 0 as nobody: message")
            all_ready_with(bus, pids, "rank 0 still ready, same process")
            r = busctl(bus, "call", "org.dpengine1", "/org/dpengine1", "org.dpengine1.Manager", "ListRanks")
            check_eq(r.returncode, 0, "ListRanks still answers")
    finally:
        shutil.rmtree(policy_dir, ignore_errors=True)


def main() -> None:
    shipped_policy()
    daemon_check()


if __name__ == "__main__":
    run_test(main, timeout=120)
