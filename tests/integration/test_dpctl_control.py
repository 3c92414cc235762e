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

import threading
import time

from busharness import Monitor, SystemBus, dpctl, dpctl_json, rank_by_number, wait_for_name
from harness import (Daemon, check, check_eq, log, post_json, run_test, slow_factor, synthetic_completion,
                     wait_until)

DP = 4
CLIENTS = 8
MAX_TOKENS = 8


class Load:
    """CLIENTS threads looping completions until stopped; every answer is checked."""

    def __init__(self, port: int):
        self.port = port
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def run(self, client: int) -> None:
        n = 0
        while not self.stop_flag.is_set():
            prompt, seed = f"client {client} request {n}", client * 100000 + n
            n += 1
            try:
                status, body = post_json(self.port, "/v1/completions",
                                         {"prompt": prompt, "max_tokens": MAX_TOKENS, "seed": seed}, timeout=60)
                good = status == 200 and body["choices"][0]["text"] == synthetic_completion(prompt, seed, MAX_TOKENS).text
                detail = None if good else f"{status} {body}"
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                good, detail = False, f"{type(e).__name__}: {e}"
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append(f"client {client} request {n - 1}: {detail}")

    def count(self) -> int:
        with self.lock:
            return self.ok

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(60)


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
            with Load(d.port) as load:
                check(wait_until(lambda: load.count() >= 20, 20 * slow_factor()), "requests flow", load.count())

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
                before = load.count()
                check(wait_until(lambda: load.count() >= before + 20, 20 * slow_factor()),
                      "requests flow after the restart")

                # --- drain rank 2
                mark = monitor.mark()
                r = dpctl(bus, "drain", "2", timeout=120)
                check_eq(r.returncode, 0, "dpctl drain 2 exit status")
                ranks = rank_by_number(dpctl_json(bus, "ranks"))
                check_eq((ranks[2]["state"], ranks[2]["in_flight"]), ("draining", 0),
                         "rank 2 draining with nothing in flight when drain returns")
                served_2 = ranks[2]["served"]
                served_others = sum(r["served"] for n, r in ranks.items() if n != 2)
                before = load.count()
                check(wait_until(lambda: load.count() >= before + 40, 20 * slow_factor()),
                      "40 more requests served while rank 2 drains")
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
            log(f"  {load.ok} requests completed, {len(load.failures)} failed")
            check(not load.failures, "no request failed", load.failures[:5])
            check(load.ok >= 100, "at least 100 requests completed", load.ok)
            pids_after = d.ranks()
            check_eq({n: p for n, p in pids_after.items() if n != 1}, {n: p for n, p in pids_before.items() if n != 1},
                     "ranks 0, 2 and 3 kept their processes")
            check_eq(dpctl_json(bus, "status")["ready_ranks"], DP, "all ranks ready at the end")


if __name__ == "__main__":
    run_test(main, timeout=150)
