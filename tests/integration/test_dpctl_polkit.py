"""polkit narrows what members of group 'dpengine' may change, one action per kind of method.

A private system bus with the shipped policy, plus a stand-in for polkitd
(build/tests/dpengine-test-polkit) that grants only the actions it is given and prints every
question; dpengined with DP=2; a real user in group dpengine. Checks:
  1. No polkit on the bus: the member may drain and undrain (membership decides).
  2. polkit granting only org.dpengine1.reload: the member's `dpctl drain 1` exits 4 naming the
     denied action, rank 1 stays ready; `dpctl stop-node` is denied as manage-node; `dpctl
     reload` works. polkit was asked about exactly those actions, for the member's bus name.
  3. root is not sent to polkit; nobody (outside the group) is refused without asking it.
"""

import os
import subprocess

from busharness import (NOBODY, SystemBus, dpctl, dpctl_json, group_member, rank_by_number, wait_for_name)
from harness import Daemon, build_dir, check, check_eq, check_in, log, run_test, slow_factor, wait_until
import busharness

POLKIT_POLICY = """<policy user="root"><allow own="org.freedesktop.PolicyKit1"/></policy>
  <policy context="default"><allow send_destination="org.freedesktop.PolicyKit1"/></policy>"""


class PolkitStub:
    def __init__(self, bus: SystemBus, *allowed: str):
        env = dict(os.environ, **bus.env)
        self.proc = subprocess.Popen([os.path.join(build_dir(), "tests", "dpengine-test-polkit"), *allowed],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        busharness._register(self.proc)
        first = self.proc.stdout.readline().strip()
        check_eq(first, "ready", "the polkit stand-in owns org.freedesktop.PolicyKit1")
        self.questions: list[list[str]] = []

    def close(self) -> list[list[str]]:
        """Stops it; returns every question it was asked: [action, subject kind, name, flags]."""
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        busharness._unregister(self.proc)
        return [line.split()[1:] for line in out.splitlines() if line.startswith("check ")]


def rank_state(bus: SystemBus, rank: int) -> str:
    return rank_by_number(dpctl_json(bus, "ranks"))[rank]["state"]


def main() -> None:
    with group_member() as member, SystemBus(extra_policy=POLKIT_POLICY) as bus, \
            Daemon({"data_parallel": {"size": 2}}, env=bus.env, name="polkit") as d:
        d.wait_ready(30)
        check(wait_for_name(bus, 10), "org.dpengine1 is on the bus")

        log("1. no polkit: membership decides")
        check_eq(dpctl(bus, "drain", "1", "--timeout", "20", user=member).returncode, 0, "member drains rank 1")
        check_eq(rank_state(bus, 1), "draining", "rank 1 is draining")
        check_eq(dpctl(bus, "undrain", "1", user=member).returncode, 0, "member undrains rank 1")

        log("2. polkit grants only org.dpengine1.reload")
        stub = PolkitStub(bus, "org.dpengine1.reload")
        try:
            r = dpctl(bus, "drain", "1", user=member)
            check_eq(r.returncode, 4, "member's drain is denied: exit status")
            check_in("polkit denied the action 'org.dpengine1.manage-ranks'", r.stderr, "member's drain: message")
            check_eq(rank_state(bus, 1), "ready", "rank 1 still ready")
            r = dpctl(bus, "stop-node", user=member)
            check_eq(r.returncode, 4, "member's stop-node is denied")
            check_in("'org.dpengine1.manage-node'", r.stderr, "stop-node: the action named")
            check_eq(dpctl_json(bus, "status")["ready_ranks"], 2, "both ranks still ready")
            r = dpctl(bus, "reload", user=member)
            check_eq(r.returncode, 0, "member's reload is granted")
            check(wait_until(lambda: "configuration reloaded" in d.log_text(), 10 * slow_factor()),
                  "the daemon reloaded", d.log_text())

            log("3. root and nobody never reach polkit")
            check_eq(dpctl(bus, "drain", "0", "--timeout", "20").returncode, 0, "root drains rank 0")
            check_eq(dpctl(bus, "undrain", "0").returncode, 0, "root undrains rank 0")
            r = dpctl(bus, "drain", "0", user=NOBODY)
            check_eq(r.returncode, 4, "nobody is refused")
        finally:
            questions = stub.close()
        log(f"  polkit was asked: {questions}")
        check_eq([q[0] for q in questions],
                 ["org.dpengine1.manage-ranks", "org.dpengine1.manage-node", "org.dpengine1.reload"],
                 "polkit was asked once per member's call, for the method's action")
        check(all(q[1] == "system-bus-name" and q[2].startswith(":") for q in questions),
              "each question names the caller's unique bus name", questions)


if __name__ == "__main__":
    run_test(main, timeout=120)
