"""polkit decides what members of group 'dpengine' may change, asked by a daemon that runs as
user dpengine, answered by the real polkitd.

A private system bus with the shipped D-Bus policies (dpengine's and polkitd's own); Debian's
polkitd on it, in a private mount namespace that shows it only the shipped dpengine actions and
rules (busharness.Polkitd); dpengined with DP=2 run as user dpengine, as the unit runs it; a
real user in group dpengine (the member); nobody, in no group. Checks:
  1. No polkit on the bus: the member may drain and undrain (membership decides).
  2. polkitd with the shipped actions and rules: root and the member may drain, restart and
     reload. polkitd answers the daemon (not root, asking about another user) only because
     the actions name user dpengine as their owner. nobody is refused each, exit status 4,
     with the access-denied message, and nothing changes. polkitd was asked about exactly the
     member's calls, once each, about the member (a logging rule shows what it was asked).
  3. An administrator's rule (/etc/polkit-1/rules.d) narrowing the group to reload: the
     member's `dpctl drain 1` exits 4 naming the denied action and rank 1 stays ready;
     `dpctl stop-node` is denied as manage-node; `dpctl reload` still works.
  4. The action file without the owner annotation (as shipped before): polkitd refuses the
     daemon's question; the member's drain exits 4 with a message naming the annotation to
     add, and rank 1 stays ready.
"""

import pwd
import re

from busharness import (DENIED_TO_OTHERS, NOBODY, POLKIT_ACTIONS, POLKIT_BUS_POLICY, Polkitd, SystemBus, dpctl,
                        dpctl_json, group_member, rank_by_number, service_user, text_of, wait_for_name)
from harness import Daemon, check, check_eq, check_in, log, run_test, slow_factor, wait_until

# Runs before the shipped rules (50-) and decides nothing: it records each question.
LOG_QUESTIONS = """polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.dpengine1.") === 0) polkit.log("dpengine-question " + action.id + " " + subject.user);
});
"""

# An administrator narrowing what the group may do: only reload.
ONLY_RELOAD = """polkit.addRule(function(action, subject) {
    if (action.id.indexOf("org.dpengine1.") === 0 && action.id !== "org.dpengine1.reload" &&
        subject.isInGroup("dpengine")) {
        return polkit.Result.NO;
    }
});
"""


def rank_state(bus: SystemBus, rank: int) -> str:
    return rank_by_number(dpctl_json(bus, "ranks"))[rank]["state"]


def reloads(d: Daemon) -> int:
    return d.log_text().count("configuration reloaded")


def questions(polkitd: Polkitd) -> list[list[str]]:
    """What polkitd was asked so far: [action, user] for each question, in order."""
    return [line.split("dpengine-question ", 1)[1].split() for line in polkitd.log_text().splitlines()
            if "dpengine-question " in line]


def effective_uid(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[2])  # effective
    raise AssertionError(f"no Uid: line for pid {pid}")


def may_change(bus: SystemBus, d: Daemon, who: str, user=None) -> None:
    """`who` (uid `user`; None: root) drains and undrains rank 1, restarts it, and reloads."""
    check_eq(dpctl(bus, "drain", "1", "--timeout", "20", user=user).returncode, 0, f"{who} drains rank 1")
    check_eq(rank_state(bus, 1), "draining", f"{who}: rank 1 is draining")
    check_eq(dpctl(bus, "undrain", "1", user=user).returncode, 0, f"{who} undrains rank 1")
    before = rank_by_number(dpctl_json(bus, "ranks"))[1]
    check_eq(dpctl(bus, "restart", "1", "--timeout", str(int(60 * slow_factor())), user=user).returncode, 0,
             f"{who} restarts rank 1")
    after = rank_by_number(dpctl_json(bus, "ranks"))[1]
    check(after["state"] == "ready" and after["pid"] != before["pid"], f"{who}: rank 1 is ready in a new process",
          (before, after))
    done = reloads(d)
    check_eq(dpctl(bus, "reload", user=user).returncode, 0, f"{who} reloads")
    check(wait_until(lambda: reloads(d) > done, 10 * slow_factor()), f"{who}: the daemon reloaded", d.log_text())


def main() -> None:
    with group_member() as member, service_user() as daemon_user, \
            SystemBus(extra_policy=POLKIT_BUS_POLICY) as bus, \
            Daemon({"data_parallel": {"size": 2}}, env=bus.env, name="polkit", user=daemon_user) as d:
        d.wait_ready(30)
        check(wait_for_name(bus, 10), "org.dpengine1 is on the bus")
        check_eq(pwd.getpwuid(effective_uid(d.pid)).pw_name, daemon_user, "the daemon runs as user dpengine")

        log("1. no polkit: membership decides")
        check_eq(dpctl(bus, "drain", "1", "--timeout", "20", user=member).returncode, 0, "member drains rank 1")
        check_eq(rank_state(bus, 1), "draining", "rank 1 is draining")
        check_eq(dpctl(bus, "undrain", "1", user=member).returncode, 0, "member undrains rank 1")

        log("2. polkitd with the shipped actions and rules")
        with Polkitd(bus, admin_rules={"00-log-questions.rules": LOG_QUESTIONS}) as polkitd:
            may_change(bus, d, "root")
            check_eq(questions(polkitd), [], "root's calls are not sent to polkit")
            may_change(bus, d, "the member", member)
            member_name = pwd.getpwuid(member).pw_name
            check_eq(questions(polkitd),
                     [["org.dpengine1.manage-ranks", member_name]] * 3 + [["org.dpengine1.reload", member_name]],
                     "polkitd was asked once per member's call, about the member, for the method's action")
            pids = d.ranks()
            done = reloads(d)
            for verb in (("drain", "1"), ("restart", "1"), ("reload",)):
                r = dpctl(bus, *verb, user=NOBODY)
                check_eq(r.returncode, 4, f"nobody's {verb[0]}: exit status")
                check_in(DENIED_TO_OTHERS, r.stderr, f"nobody's {verb[0]}: message")
            check_eq(d.ranks(), pids, "nobody changed nothing: the same rank processes")
            check_eq(dpctl_json(bus, "status")["ready_ranks"], 2, "both ranks ready")
            check_eq(reloads(d), done, "nobody did not reload")
            check_eq(len(questions(polkitd)), 4, "nobody's calls are not sent to polkit")

        log("3. an administrator's rule narrows the group to reload")
        with Polkitd(bus, admin_rules={"40-only-reload.rules": ONLY_RELOAD}):
            r = dpctl(bus, "drain", "1", user=member)
            check_eq(r.returncode, 4, "member's drain is denied: exit status")
            check_in("polkit denied the action 'org.dpengine1.manage-ranks'", r.stderr, "member's drain: message")
            check_eq(rank_state(bus, 1), "ready", "rank 1 still ready")
            r = dpctl(bus, "stop-node", user=member)
            check_eq(r.returncode, 4, "member's stop-node is denied")
            check_in("'org.dpengine1.manage-node'", r.stderr, "stop-node: the action named")
            check_eq(dpctl_json(bus, "status")["ready_ranks"], 2, "both ranks still ready")
            done = reloads(d)
            check_eq(dpctl(bus, "reload", user=member).returncode, 0, "member's reload is granted")
            check(wait_until(lambda: reloads(d) > done, 10 * slow_factor()), "the daemon reloaded", d.log_text())

        log("4. actions that do not name the daemon's user as their owner")
        ownerless = re.sub(r"\s*<annotate key=\"org\.freedesktop\.policykit\.owner\">[^<]*</annotate>", "",
                           text_of(POLKIT_ACTIONS))
        check("<annotate" not in ownerless and "<action " in ownerless, "the action file without owners", ownerless)
        with Polkitd(bus, actions=ownerless):
            r = dpctl(bus, "drain", "1", user=member)
            check_eq(r.returncode, 4, "member's drain is refused: exit status")
            check_in("polkit could not authorize 'org.dpengine1.manage-ranks'", r.stderr, "member's drain: message")
            check_in("org.freedesktop.policykit.owner (unix-user:dpengine)", r.stderr,
                     "member's drain: the message names the annotation to add")
            check_eq(rank_state(bus, 1), "ready", "rank 1 still ready")


if __name__ == "__main__":
    run_test(main, timeout=240)
