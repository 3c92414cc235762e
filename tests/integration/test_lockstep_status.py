"""Per-rank DP group and engine activity in `dpctl ranks` and on org.dpengine1.Rank.

A private dbus-daemon; dpengined with DP=4 in lockstep mode (gloo group) on one node. Ranks 1-3
are drained (`dpctl drain`), so the front-end routes a steady stream of completions (8 client
threads) to rank 0 alone, while the drained ranks stay in the DP group and step with it on
dummy batches. Checks:
  - `dpctl ranks --json`: every rank shows group_kind "gloo" and the same group_epoch > 0, a
    wave > 0, memory_used 0 (the synthetic backend measures none); the idle ranks show
    steps_per_second > 0 and dummy_step_share > 0, and the busy rank's share is lower than
    every idle rank's.
  - the Rank objects' GroupKind, GroupEpoch, Wave, MemoryUsed, StepsPerSecond, DummyStepShare
    (busctl get-property) agree with dpctl; `dpctl ranks` prints the new columns.
  - after rank 2 is SIGKILLed and restarted by its supervisor, the group re-forms: every rank
    shows the same group_epoch, higher than before.
  - independent mode (DP=2, requests flowing): group_kind "none", group_epoch 0, wave 0, dummy
    share 0, and steps_per_second > 0 on a rank with work; the table shows "none" and "-".
"""

import os
import signal

from busharness import RANK_INTERFACE, SERVICE, SystemBus, busctl, dpctl, dpctl_json, rank_by_number, wait_for_name
from harness import Daemon, check, check_eq, log, run_test, slow_factor, wait_until
import faults
# The same steady stream of checked completions as the dpctl control test.

DP = 4
BUSY = 0
IDLE = [1, 2, 3]
VICTIM = 2
ACTIVITY = ["group_kind", "group_epoch", "wave", "steps_per_second", "dummy_step_share", "memory_used"]
NEW_COLUMNS = ["GROUP", "EPOCH", "WAVE", "STEPS/S", "DUMMY", "MEM"]
PROPERTIES = {"GroupKind": "group_kind", "GroupEpoch": "group_epoch", "Wave": "wave", "MemoryUsed": "memory_used",
              "StepsPerSecond": "steps_per_second", "DummyStepShare": "dummy_step_share"}


def ranks(bus: SystemBus) -> dict[int, dict]:
    return rank_by_number(dpctl_json(bus, "ranks"))


def rank_properties(bus: SystemBus, rank: int) -> dict[str, object]:
    """The Rank object's activity properties, by dpctl's JSON names (busctl get-property)."""
    r = busctl(bus, "get-property", SERVICE, f"/org/dpengine1/rank/{rank}", RANK_INTERFACE, *PROPERTIES)
    check_eq(r.returncode, 0, f"busctl get-property of rank {rank}: {r.stderr.strip()}")
    out: dict[str, object] = {}
    for name, line in zip(PROPERTIES.values(), r.stdout.strip().split("\n")):
        kind, value = line.split(" ", 1)
        out[name] = value.strip('"') if kind == "s" else float(value) if kind == "d" else int(value)
    return out


def one_group(view: dict[int, dict], members: int, states: tuple[str, ...] = ("ready",)) -> int | None:
    """The common group epoch when `members` ranks (in `states`) are in one gloo group, else None."""
    if len(view) != members or any(r["state"] not in states or r["group_kind"] != "gloo" for r in view.values()):
        return None
    epochs = {r["group_epoch"] for r in view.values()}
    return epochs.pop() if len(epochs) == 1 and min(epochs) > 0 else None


def activity_cells(bus: SystemBus) -> dict[int, list[str]]:
    """`dpctl ranks`: each row's GROUP, EPOCH, WAVE, STEPS/S, DUMMY and MEM cells (the six
    before ERROR, which is "-" here; DEVICE holds a blank, so rows are read from the right)."""
    r = dpctl(bus, "ranks")
    check_eq(r.returncode, 0, "dpctl ranks exit status")
    lines = r.stdout.rstrip("\n").split("\n")
    check_eq(lines[0].split()[-7:], NEW_COLUMNS + ["ERROR"], "dpctl ranks: the group and activity columns")
    rows = {}
    for line in lines[1:-2]:  # then a blank line and the legend
        cells = line.split()
        check(cells[-1] == "-", f"rank {cells[0]}'s row has no error", line)
        rows[int(cells[0])] = cells[-7:-1]
    return rows


def lockstep(bus: SystemBus) -> None:
    config = {"data_parallel": {"size": DP, "dp_sync": "lockstep", "group_timeout": 1.0},
              "engine": {"step_time_ms": 5.0},
              "supervision": {"restart_backoff": 1.0}}
    with Daemon(config, env=bus.env, name="lockstep-status") as d:
        d.wait_ready(30)
        check(wait_for_name(bus, 10), f"{SERVICE} appears on the bus")
        epoch = wait_until(lambda: one_group(ranks(bus), DP), 30 * slow_factor(), 0.3)
        check(epoch, "every rank shows one gloo group with an epoch > 0", ranks(bus))
        view = ranks(bus)
        for n, r in view.items():
            check(all(k in r for k in ACTIVITY), f"rank {n} has the activity fields", r)
            check_eq(r["memory_used"], 0, f"rank {n}: the synthetic backend measures no device memory")

        for n in IDLE:
            check_eq(dpctl(bus, "drain", str(n)).returncode, 0, f"dpctl drain {n}")
        with faults.Load(d.port, clients=8, max_tokens=8, streams=False) as load:
            def imbalanced():
                view = ranks(bus)
                if not one_group(view, DP, ("ready", "draining")):
                    return None
                busy, idle = view[BUSY], [view[n] for n in IDLE]
                if not all(r["steps_per_second"] > 0 and r["dummy_step_share"] > 0 for r in idle):
                    return None
                if busy["steps_per_second"] <= 0 or busy["served"] == 0:
                    return None
                return view
            seen = wait_until(imbalanced, 30 * slow_factor(), 0.5)
            check(seen, "under load on rank 0 alone, every rank steps and the drained ones step on dummy batches",
                  ranks(bus))
            log("  " + "; ".join(f"rank {n}: {r['steps_per_second']:.1f} steps/s, dummy {r['dummy_step_share']:.2f}, "
                                 f"wave {r['wave']}" for n, r in sorted(seen.items())))
            epoch = seen[BUSY]["group_epoch"]
            busy_share = seen[BUSY]["dummy_step_share"]
            check(busy_share < min(seen[n]["dummy_step_share"] for n in IDLE),
                  "the busy rank's dummy share is below every idle rank's", seen)
            check(all(r["wave"] > 0 for r in seen.values()), "every rank reports a wave", seen)
            check_eq({n: r["served"] for n, r in seen.items() if n != BUSY}, {n: 0 for n in IDLE},
                     "the drained ranks served nothing")

            # The bus agrees with dpctl: the same group, and rates of the same kind.
            for n in range(DP):
                props = rank_properties(bus, n)
                check_eq((props["group_kind"], props["group_epoch"], props["memory_used"]), ("gloo", epoch, 0),
                         f"rank {n}: GroupKind, GroupEpoch, MemoryUsed on the bus")
                check(props["wave"] > 0 and props["steps_per_second"] > 0 and 0 <= props["dummy_step_share"] <= 1,
                      f"rank {n}: Wave, StepsPerSecond, DummyStepShare on the bus", props)
                if n in IDLE:
                    check(props["dummy_step_share"] > 0, f"rank {n}: DummyStepShare > 0 on the bus", props)

            for n, cells in activity_cells(bus).items():
                check_eq((cells[0], cells[1], cells[5]), ("gloo", str(epoch), "-"), f"rank {n}'s row: GROUP, EPOCH, MEM")
                check(cells[4].endswith("%") and float(cells[3]) >= 0, f"rank {n}'s row: STEPS/S, DUMMY in percent",
                      cells)
            check(not load.report.failures(), "no completion failed", load.report.failures()[:5])
        for n in IDLE:
            check_eq(dpctl(bus, "undrain", str(n)).returncode, 0, f"dpctl undrain {n}")

        # A member lost and back: the group re-forms under a higher epoch, on every rank.
        epoch = wait_until(lambda: one_group(ranks(bus), DP), 30 * slow_factor(), 0.3)
        check(epoch, "after the undrain every rank is ready in one group", ranks(bus))
        victim_pid = d.ranks()[VICTIM]
        log(f"SIGKILL to rank {VICTIM} (pid {victim_pid})")
        os.kill(victim_pid, signal.SIGKILL)

        def reformed():
            view = ranks(bus)
            after = one_group(view, DP)
            return after if after and after > epoch and view[VICTIM]["pid"] not in (0, victim_pid) else None
        after = wait_until(reformed, 40 * slow_factor(), 0.5)
        check(after, f"after rank {VICTIM}'s restart every rank shows one group epoch above {epoch}", ranks(bus))
        log(f"  group epoch {epoch} -> {after}")
        for n in range(DP):
            check_eq(rank_properties(bus, n)["group_epoch"], after, f"rank {n}: GroupEpoch on the bus after the re-form")


def independent(bus: SystemBus) -> None:
    config = {"data_parallel": {"size": 2}, "engine": {"step_time_ms": 5.0}}
    with Daemon(config, env=bus.env, name="independent-status") as d:
        d.wait_ready(30)
        check(wait_for_name(bus, 10), f"{SERVICE} appears on the bus")
        with faults.Load(d.port, clients=8, max_tokens=8, streams=False) as load:
            working = wait_until(lambda: [r for r in ranks(bus).values() if r["steps_per_second"] > 0],
                                 30 * slow_factor(), 0.5)
            check(working, "a rank with work shows steps per second in independent mode", ranks(bus))
            view = ranks(bus)
            for n, r in view.items():
                check_eq({k: r[k] for k in ("group_kind", "group_epoch", "wave", "dummy_step_share", "memory_used")},
                         {"group_kind": "none", "group_epoch": 0, "wave": 0, "dummy_step_share": 0, "memory_used": 0},
                         f"rank {n} without a DP group")
                props = rank_properties(bus, n)
                check_eq((props["group_kind"], props["group_epoch"], props["wave"], props["dummy_step_share"]),
                         ("none", 0, 0, 0.0), f"rank {n}: the bus says no group")
            for n, cells in activity_cells(bus).items():
                check_eq([cells[0], cells[1], cells[2], cells[4], cells[5]], ["none", "-", "-", "-", "-"],
                         f"rank {n}'s row: GROUP none, EPOCH, WAVE, DUMMY and MEM empty")
            check(not load.report.failures(), "no completion failed", load.report.failures()[:5])


def main() -> None:
    with SystemBus() as bus:
        lockstep(bus)
        independent(bus)


if __name__ == "__main__":
    run_test(main, timeout=180)
