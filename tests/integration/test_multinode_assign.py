"""Dynamic rank assignment and `dpctl assign` over three namespaces.

DP=5: the head runs ranks 0-1; headless node B (-dpl 3) and node C (-dpl 2) give no start
rank, so the head assigns their ranks. Checks:
  - node B gets the block the head does not hold (2-4) and runs exactly those ranks; node C,
    started later, finds no free block: it registers with no ranks and runs none;
  - invalid assignments are refused with InvalidArgs and a message naming the problem, dpctl
    exits 5 (refused by the daemon) and the daemon keeps serving: ranks out of range, an
    unknown node, a block that would split node B's ranks in two (overlap with ranks that are
    not moved), count 0, the head as target when that would split node B's block; and a
    malformed count is refused by dpctl itself (exit 2);
  - `dpctl assign node-c --start-rank 3 --count 2` while a stream of completions flows: node B
    drains and stops ranks 3-4, node C starts them, the epoch goes up; dpctl returns once they
    are ready on node C; not one request fails and every answer is right;
  - afterwards status shows the new placement (B: 2, C: 3-4), 5 ready ranks, and node B's and
    node C's rank processes match it; node B did not restart ranks 3-4 after they stopped;
  - the head restarts: node B's head link is "disconnected" meanwhile; both nodes register
    with the new head (the node link reconnects) and keep the blocks they run, with the same
    rank processes, and the new head serves.
  - one of the head's own ranks (1) moves to node B under load (assign node-b --start-rank 1
    --count 2): the head stops its process, node B starts it, no request fails.
  - rank 1 moves back to the head under load (assign head --start-rank 0 --count 2): node B
    stops it, the head starts it and controls it again, no request fails.
"""

import threading
import time

from busharness import SystemBus, dpctl, dpctl_json, rank_by_number, wait_for_name
from harness import check, check_eq, check_in, log, run_test, slow_factor, synthetic_completion, wait_until
from netns import Cluster, Network, completion_load, rank_switches

DP = 5


class RequestStream:
    """Completions sent back to back from `workers` threads in the head's namespace until
    stop(); each answer is checked against the synthetic backend."""

    def __init__(self, head, workers: int = 6, max_tokens: int = 48):
        self.head = head
        self.max_tokens = max_tokens
        self.ok = 0
        self.problems: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(workers)]
        self._seq = 0

    def _next(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def _run(self, worker: int) -> None:
        while not self._stop.is_set():
            i = self._next()
            prompt = f"stream {worker} request {i}"
            try:
                status, body = self.head.complete(prompt, max_tokens=self.max_tokens, seed=i, timeout=60 * slow_factor())
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                with self._lock:
                    self.problems.append(f"request {i}: {type(e).__name__}: {e}")
                continue
            want = synthetic_completion(prompt, i, self.max_tokens)
            good = status == 200 and isinstance(body, dict) and body.get("choices") and \
                body["choices"][0].get("text") == want.text
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.problems.append(f"request {i}: HTTP {status}: {str(body)[:300]}")

    def start(self) -> "RequestStream":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(90 * slow_factor())

    def count(self) -> int:
        with self._lock:
            return self.ok


def node_by_name(nodes: list[dict]) -> dict[str, dict]:
    return {n["name"]: n for n in nodes}


def move_under_load(head, bus, node: str, start: int, count: int, what: str) -> None:
    """`dpctl assign NODE --start-rank START --count COUNT` while a request stream flows: dpctl
    returns once the ranks are ready, the stream goes on, and not one request fails."""
    stream = RequestStream(head).start()
    check(wait_until(lambda: stream.count() >= 20, 30 * slow_factor(), interval=0.1),
          f"the request stream flows before {what}", stream.problems[:5])
    moved = dpctl(bus, "assign", node, "--start-rank", str(start), "--count", str(count), "--timeout", "60")
    check_eq(moved.returncode, 0, f"dpctl assign {node} --start-rank {start} --count {count} completes")
    at_move = stream.count()
    check(wait_until(lambda: stream.count() >= at_move + 30, 30 * slow_factor(), interval=0.1),
          f"the stream goes on after {what}")
    stream.stop()
    check_eq(stream.problems[:10], [], f"no request failed or was wrong during {what}")


def check_ready_on(status: dict, nodes: dict) -> None:
    """Every rank of a `dpctl status --json` document is ready on the node `nodes` gives."""
    check_eq({r: (x["state"], x["node"]) for r, x in rank_by_number(status).items()},
             {r: ("ready", node) for r, node in nodes.items()}, "every rank is ready where it now runs")


def placement(bus) -> dict[str, str]:
    return {n["name"]: n["ranks"] for n in dpctl_json(bus, "nodes")}


def main() -> None:
    with Network("as") as net, SystemBus() as bus_a, SystemBus() as bus_b, SystemBus() as bus_c:
        a, b, cns = net.add_nodes("head", "b", "c")
        with Cluster(net, "ipv4") as c:
            head = c.head(a, dp=DP, dpl=2, authorized=[("node-b", None), ("node-c", None)], env=bus_a.env)
            node_b = c.headless(b, "node-b", dp=DP, dpl=3, dpr=None, env=bus_b.env)
            node_c = c.headless(cns, "node-c", dp=DP, dpl=2, dpr=None, env=bus_c.env)
            c.start_ready(head, node_b)
            check(head.wait_ready_ranks(DP, 30), f"the head has {DP} ready ranks", head.health())
            check(wait_for_name(bus_a, 10), "the head owns org.dpengine1")
            check_eq(placement(bus_a), {"head": "0-1", "node-b": "2-4"},
                     "node B, without a start rank, gets the block the head does not hold")
            check(wait_until(lambda: sorted(node_b.ranks()) == [2, 3, 4], 10 * slow_factor()),
                  "node B runs ranks 2-4", node_b.ranks())
            check_in("where the head assigns them", node_b.log_text(), "node B logs that it waits for an assignment")

            node_c.start()
            node_c.wait_ready(30)
            check(wait_until(lambda: "node-c" in placement(bus_a), 15 * slow_factor(), interval=0.2),
                  "node C registers", dpctl(bus_a, "nodes").stdout)
            nodes = node_by_name(dpctl_json(bus_a, "nodes"))
            check_eq((nodes["node-c"]["state"], nodes["node-c"]["count"], nodes["node-c"]["wanted"]),
                     ("connected", 0, 2), "node C is connected with no ranks (none is free) and wants 2")
            time.sleep(1.0)
            check_eq(node_c.ranks(), {}, "node C runs no rank without an assignment")
            check_in("no free block of 2 rank(s)", head.log_text(), "the head says why node C has no ranks")

            # Invalid assignments: refused with the reason; the daemon serves on.
            epoch_before = dpctl_json(bus_a, "status")["epoch"]
            for args, reason, what in [
                (["node-c", "--start-rank", "4", "--count", "2"], "out of range", "ranks 4-5 with DP size 5"),
                (["node-x", "--start-rank", "3", "--count", "1"], "unknown node 'node-x'", "an unknown node"),
                (["node-c", "--start-rank", "3", "--count", "1"], "would split node 'node-b' ranks 2-4",
                 "a block inside node B's (overlapping ranks that are not moved)"),
                (["node-c", "--start-rank", "3", "--count", "0"], "count must be 1 or more", "count 0"),
                (["head", "--start-rank", "3", "--count", "1"], "would split node 'node-b' ranks 2-4",
                 "the head as target, splitting node B's block"),
            ]:
                r = dpctl(bus_a, "assign", *args)
                check_eq(r.returncode, 5, f"assign refused for {what} (exit 5: refused as invalid)")
                check_in(reason, r.stderr, f"the message for {what}")
            bad = dpctl(bus_a, "assign", "node-c", "--start-rank", "3", "--count", "two")
            check_eq(bad.returncode, 2, "a malformed --count is refused by dpctl (exit 2)")
            check_in("--count", bad.stderr, "... naming the option")
            check_eq(dpctl(bus_a, "assign", "node-c", "--count", "1").returncode, 2, "a missing --start-rank: exit 2")
            check(head.running(), "the head still runs")
            status, body = head.complete("after the refusals", max_tokens=8)
            check_eq(status, 200, "the head still serves after the refused assignments")
            check_eq(placement(bus_a), {"head": "0-1", "node-b": "2-4", "node-c": ""}, "nothing moved")
            check_eq(dpctl_json(bus_a, "status")["epoch"], epoch_before, "the epoch did not change")

            # The move, under load.
            b_pids_before = node_b.ranks()
            stream = RequestStream(head).start()
            check(wait_until(lambda: stream.count() >= 20, 30 * slow_factor(), interval=0.1),
                  "the request stream flows before the move", stream.problems[:5])
            t0 = time.monotonic()
            moved = dpctl(bus_a, "assign", "node-c", "--start-rank", "3", "--count", "2", "--timeout", "60")
            log(f"  assign took {time.monotonic() - t0:.1f} s; {stream.count()} requests so far")
            check_eq(moved.returncode, 0, "dpctl assign completes (the ranks are ready on node C)")
            served_at_move = stream.count()
            c_ranks = node_c.ranks()
            check_eq(sorted(c_ranks), [3, 4], "node C runs ranks 3 and 4 once dpctl assign returns")
            c_work_before = rank_switches(c_ranks)
            check(wait_until(lambda: stream.count() >= served_at_move + 30, 30 * slow_factor(), interval=0.1),
                  "the stream goes on after the move")
            c_work = {r: v - c_work_before[r] for r, v in rank_switches(c_ranks).items()}
            check(all(v >= 20 for v in c_work.values()), "node C's ranks 3 and 4 serve part of the stream", c_work)
            stream.stop()
            log(f"  {stream.ok} requests served during the test, {len(stream.problems)} problem(s)")
            check_eq(stream.problems[:10], [], "no request failed or was wrong during the move")

            check_in("assigning ranks 3-4 to node 'node-c'", head.log_text(), "the head logs the move")
            check_in("runs ranks 3-4", head.log_text(), "... and its completion")
            st = dpctl_json(bus_a, "status")
            check(st["epoch"] > epoch_before, f"the epoch went up ({epoch_before} -> {st['epoch']})")
            check_eq(placement(bus_a), {"head": "0-1", "node-b": "2", "node-c": "3-4"}, "the new placement")
            check_ready_on(st, {0: "head", 1: "head", 2: "node-b", 3: "node-c", 4: "node-c"})
            check(wait_until(lambda: sorted(node_b.ranks()) == [2] and sorted(node_c.ranks()) == [3, 4],
                             10 * slow_factor()),
                  "node B runs rank 2 only, node C runs 3 and 4", (node_b.ranks(), node_c.ranks()))
            check_eq(node_b.ranks()[2], b_pids_before[2], "node B's rank 2 is the same process throughout")
            time.sleep(2.0)
            check_eq(sorted(node_b.ranks()), [2], "node B did not restart the ranks it gave away")
            st_c = dpctl_json(bus_c, "status")
            check_eq(sorted(rank_by_number(st_c)), [3, 4], "node C's own status lists ranks 3 and 4")
            check_eq(st_c["epoch"], st["epoch"], "node C knows the new epoch")

            # The head restarts: the nodes register again and keep the blocks they run.
            pids = {**node_b.ranks(), **node_c.ranks()}
            check_eq(head.stop(), 0, "the head stops cleanly")
            check(wait_until(lambda: dpctl_json(bus_b, "nodes") and
                             node_by_name(dpctl_json(bus_b, "nodes"))["head"]["state"] == "disconnected",
                             15 * slow_factor(), interval=0.3),
                  "node B reports its head link as disconnected", dpctl(bus_b, "status").stdout)
            head = c.head(a, dp=DP, dpl=2, authorized=[("node-b", None), ("node-c", None)], env=bus_a.env)
            head.start()
            check(head.wait_ready_ranks(DP, 30), f"the new head has {DP} ready ranks", head.health())
            check(wait_until(lambda: placement(bus_a) == {"head": "0-1", "node-b": "2", "node-c": "3-4"},
                             15 * slow_factor(), interval=0.3),
                  "the nodes register with the new head with the blocks they run", dpctl(bus_a, "nodes").stdout)
            check_eq({**node_b.ranks(), **node_c.ranks()}, pids, "node B's and node C's rank processes are untouched")
            check(wait_until(lambda: dpctl_json(bus_a, "status")["epoch"] >= 2, 10 * slow_factor(), interval=0.2),
                  "the new head's epoch does not go back behind the one the nodes knew (2)",
                  dpctl_json(bus_a, "status")["epoch"])
            check(node_by_name(dpctl_json(bus_b, "nodes"))["head"]["state"] == "connected",
                  "node B's head link is connected again")
            problems = completion_load(head, [f"after the head restart {i}" for i in range(10)], 16)
            check_eq(problems, [], "the new head serves")

            # One of the head's own ranks moves to node B, under load.
            head_pids = head.ranks()
            check_eq(sorted(head_pids), [0, 1], "the head runs ranks 0 and 1")
            epoch_before = dpctl_json(bus_a, "status")["epoch"]
            move_under_load(head, bus_a, "node-b", 1, 2, "rank 1's move to node B")
            check_eq(placement(bus_a), {"head": "0", "node-b": "1-2", "node-c": "3-4"}, "rank 1 runs on node B")
            check(wait_until(lambda: sorted(head.ranks()) == [0] and sorted(node_b.ranks()) == [1, 2],
                             10 * slow_factor()),
                  "the head's rank 1 process is gone; node B runs ranks 1 and 2", (head.ranks(), node_b.ranks()))
            check_eq(head.ranks()[0], head_pids[0], "the head's rank 0 is the same process throughout")
            st = dpctl_json(bus_a, "status")
            check(st["epoch"] > epoch_before >= 2, f"the epoch went up again ({epoch_before} -> {st['epoch']})")
            check_ready_on(st, {0: "head", 1: "node-b", 2: "node-b", 3: "node-c", 4: "node-c"})
            not_here = dpctl(bus_a, "restart", "1")
            check_eq(not_here.returncode, 5, "the head no longer controls rank 1's process (exit 5)")
            check_in("it runs ranks 0)", not_here.stderr, "the refusal names the ranks the head runs now")

            # Rank 1 moves back to the head, under load.
            b_rank_2 = node_b.ranks()[2]
            epoch_before = st["epoch"]
            move_under_load(head, bus_a, "head", 0, 2, "rank 1's move back to the head")
            check_eq(placement(bus_a), {"head": "0-1", "node-b": "2", "node-c": "3-4"}, "rank 1 runs on the head again")
            check(wait_until(lambda: sorted(head.ranks()) == [0, 1] and sorted(node_b.ranks()) == [2],
                             10 * slow_factor()),
                  "the head runs ranks 0 and 1; node B runs rank 2 only", (head.ranks(), node_b.ranks()))
            check_eq((head.ranks()[0], node_b.ranks()[2]), (head_pids[0], b_rank_2),
                     "the ranks that did not move are the same processes")
            st = dpctl_json(bus_a, "status")
            check(st["epoch"] > epoch_before, f"the epoch went up again ({epoch_before} -> {st['epoch']})")
            check_ready_on(st, {0: "head", 1: "head", 2: "node-b", 3: "node-c", 4: "node-c"})
            check_eq(dpctl(bus_a, "restart", "1", "--timeout", "60").returncode, 0,
                     "the head controls rank 1's process again (dpctl restart 1)")
            for d in (node_c, node_b, head):
                check_eq(d.stop(), 0, f"{d.name} stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=180)
