"""dpctl restart, drain and undrain while requests flow, with the change signals on the bus.

DP=4, engine steps of 5 ms, 8 client threads sending completions in a loop (each checked
against the synthetic backend's text). `busctl monitor` watches org.dpengine1. Checks:
  - `dpctl restart 1` returns once rank 1 is ready again: a new pid, Restarts 1; the monitor
    saw PropertiesChanged for rank 1's State (draining, stopped, ..., ready) and Restarts 1.
  - `dpctl drain 2` returns once rank 2 has nothing in flight; it then gets no new requests
    (Served stays put while the others keep serving); `dpctl undrain 2` brings it back (Served
    grows again); the monitor saw rank 2's State go to draining and back to ready.
  - no request failed at any point, and the daemon kept every other rank's process.
"""

import faults
from busharness import Monitor, SystemBus, dpctl, dpctl_json, rank_by_number, wait_for_name
from harness import Daemon, check, check_eq, log, run_test, slow_factor, wait_until

DP = 4
CLIENTS = 8
MAX_TOKENS = 8


def states(changes: list[dict]) -> list[str]:
    return [c["State"] for c in changes if "State" in c]


def main() -> None:
    with SystemBus() as bus:
        config = {"data_parallel": {"size": DP}, "engine": {"step_time_ms": 5.0}}
        with Daemon(config, env=bus.env, name="control") as d, Monitor(bus) as monitor:
            d.wait_ready(30)
            check(wait_for_name(bus, 10), "org.dpengine1 is on the bus")
            monitor.sync()
            pids_before = d.ranks()
            # CLIENTS threads looping plain completions until stopped; every answer is checked.
            with faults.Load(d.port, clients=CLIENTS, max_tokens=MAX_TOKENS, streams=False) as load:
                check(load.wait_ok(20, 20), "requests flow", load.completed_ok())

                # --- restart rank 1
                mark = monitor.mark()
                r = dpctl(bus, "restart", "1", timeout=120)
                check_eq(r.returncode, 0, "dpctl restart 1 exit status")
                ranks = rank_by_number(dpctl_json(bus, "ranks"))
                check_eq(ranks[1]["state"], "ready", "rank 1 is ready when restart returns")
                check_eq(ranks[1]["restarts"], 1, "rank 1 Restarts")
                check(ranks[1]["pid"] not in (0, pids_before[1]), "rank 1 has a new process",
                      (pids_before[1], ranks[1]["pid"]))
                check_eq(ranks[1]["pid"], d.ranks().get(1), "rank 1's pid is the real new process")
                got = wait_until(lambda: "ready" in states(monitor.property_changes("/org/dpengine1/rank/1", since=mark)),
                                 5 * slow_factor())
                seen = states(monitor.property_changes("/org/dpengine1/rank/1", since=mark))
                log(f"  rank 1 State signals: {seen}")
                check(got and seen[:2] == ["draining", "stopped"] and seen[-1] == "ready",
                      "PropertiesChanged: rank 1's State went draining, stopped, ..., ready", seen)
                restarts = [c["Restarts"] for c in monitor.property_changes("/org/dpengine1/rank/1", since=mark) if "Restarts" in c]
                check(restarts and restarts[-1] == 1, "PropertiesChanged carries Restarts 1 for rank 1", restarts)
                check(load.wait_ok(20, 20), "requests flow after the restart")

                # --- drain rank 2
                mark = monitor.mark()
                r = dpctl(bus, "drain", "2", timeout=120)
                check_eq(r.returncode, 0, "dpctl drain 2 exit status")
                ranks = rank_by_number(dpctl_json(bus, "ranks"))
                check_eq((ranks[2]["state"], ranks[2]["in_flight"]), ("draining", 0),
                         "rank 2 draining with nothing in flight when drain returns")
                served_2 = ranks[2]["served"]
                served_others = sum(r["served"] for n, r in ranks.items() if n != 2)
                check(load.wait_ok(40, 20), "40 more requests served while rank 2 drains")
                ranks = rank_by_number(dpctl_json(bus, "ranks"))
                check_eq((ranks[2]["served"], ranks[2]["in_flight"], ranks[2]["queued"]), (served_2, 0, 0),
                         "rank 2 got no new requests (Served, InFlight, Queued)")
                check(sum(r["served"] for n, r in ranks.items() if n != 2) >= served_others + 40,
                      "the other ranks served them")

                # --- undrain rank 2
                r = dpctl(bus, "undrain", "2")
                check_eq(r.returncode, 0, "dpctl undrain 2 exit status")
                check_eq(rank_by_number(dpctl_json(bus, "ranks"))[2]["state"], "ready", "rank 2 ready again")
                check(wait_until(lambda: rank_by_number(dpctl_json(bus, "ranks"))[2]["served"] > served_2,
                                 20 * slow_factor(), interval=0.2),
                      "rank 2 serves again after undrain")
                seen = states(monitor.property_changes("/org/dpengine1/rank/2", since=mark))
                check(seen == ["draining", "ready"], "PropertiesChanged: rank 2's State went draining, ready",
                      seen)
            failures, completed = load.report.failures(), load.report.counts()["ok"]
            log(f"  {completed} requests completed, {len(failures)} failed")
            check(not failures, "no request failed", failures[:5])
            check(completed >= 100, "at least 100 requests completed", completed)
            pids_after = d.ranks()
            check_eq({n: p for n, p in pids_after.items() if n != 1}, {n: p for n, p in pids_before.items() if n != 1},
                     "ranks 0, 2 and 3 kept their processes")
            check_eq(dpctl_json(bus, "status")["ready_ranks"], DP, "all ranks ready at the end")


if __name__ == "__main__":
    run_test(main, timeout=150)
