"""No bus, a late bus, a bus restart: inference never stops, the service comes back by itself.

dpengined (DP=2) starts with DBUS_SYSTEM_BUS_ADDRESS naming a socket where no bus listens: it
becomes ready, serves HTTP and logs a warning. Two client threads send completions for the
whole test. Then a private dbus-daemon starts at that address: org.dpengine1 appears within a
few seconds (the daemon retries in the background) and `dpctl status` works. The dbus-daemon
is killed (SIGKILL) and started again at the same address: the daemon logs the loss,
reconnects, and `dpctl status` and `dpctl restart 0` work over the new bus. No request failed
at any point, and requests completed in every phase.
"""

import threading
import time

from busharness import SystemBus, dpctl, dpctl_json, wait_for_name
from harness import Daemon, check, check_eq, log, post_json, run_test, slow_factor, synthetic_completion, wait_until

DP = 2
CLIENTS = 2
RECONNECT_S = 8.0  # the daemon retries every 2 s; allow for a slow machine


class Load:
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
            prompt, seed = f"reconnect client {client} request {n}", n
            n += 1
            try:
                status, body = post_json(self.port, "/v1/completions",
                                         {"prompt": prompt, "max_tokens": 4, "seed": seed}, timeout=30)
                good = status == 200 and body["choices"][0]["text"] == synthetic_completion(prompt, seed, 4).text
                detail = None if good else f"{status} {body}"
            except Exception as e:  # noqa: BLE001
                good, detail = False, f"{type(e).__name__}: {e}"
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failures.append(detail)
            time.sleep(0.01)

    def count(self) -> int:
        with self.lock:
            return self.ok

    def flowing(self, what: str, n: int = 10) -> None:
        before = self.count()
        check(wait_until(lambda: self.count() >= before + n, 20 * slow_factor()), f"requests complete {what}",
              self.count() - before)


def main() -> None:
    bus = SystemBus(start=False)
    with bus:
        config = {"data_parallel": {"size": DP}, "engine": {"step_time_ms": 2.0}}
        with Daemon(config, env=bus.env, name="reconnect") as d:
            d.wait_ready(30)
            check(d.wait_log(r"warning: D-Bus: cannot connect to the system bus", 5),
                  "the daemon warns that there is no bus", d.log_text())
            load = Load(d.port)
            for t in load.threads:
                t.start()
            try:
                load.flowing("without a bus")
                r = dpctl(bus, "status")
                check_eq(r.returncode, 3, "dpctl status without a bus: exit status")

                # A bus appears.
                bus.start()
                start = time.monotonic()
                check(wait_for_name(bus, RECONNECT_S), "org.dpengine1 appears once the bus is up")
                log(f"  org.dpengine1 appeared {time.monotonic() - start:.1f} s after the bus started")
                check_eq(dpctl_json(bus, "status")["ready_ranks"], DP, "dpctl status over the late bus")
                check(d.wait_log(r"D-Bus: serving org\.dpengine1", 5), "the daemon logs that it serves the bus")
                load.flowing("with the bus up")

                # The bus dies and comes back.
                bus.stop(sig=9)
                check(d.wait_log(r"D-Bus: connection lost", 10), "the daemon notices the lost bus", d.log_text())
                load.flowing("while the bus is down")
                r = dpctl(bus, "status")
                check_eq(r.returncode, 3, "dpctl status while the bus is down: exit status")
                bus.start()
                start = time.monotonic()
                check(wait_for_name(bus, RECONNECT_S), "org.dpengine1 is back on the restarted bus")
                log(f"  org.dpengine1 back {time.monotonic() - start:.1f} s after the bus restarted")
                check_eq(dpctl_json(bus, "status")["ready_ranks"], DP, "dpctl status over the restarted bus")
                r = dpctl(bus, "restart", "0", timeout=60)
                check_eq(r.returncode, 0, "dpctl restart 0 over the restarted bus")
                check_eq(dpctl_json(bus, "status")["ranks"][0]["restarts"], 1, "rank 0 restarted once")
                load.flowing("after the bus restart")
            finally:
                load.stop_flag.set()
                for t in load.threads:
                    t.join(30)
            log(f"  {load.ok} requests completed, {len(load.failures)} failed")
            check(not load.failures, "no request failed", load.failures[:5])
            check(d.running(), "the daemon is still running")


if __name__ == "__main__":
    run_test(main, timeout=120)
