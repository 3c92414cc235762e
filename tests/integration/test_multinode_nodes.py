"""The cluster view: `dpctl status`, `dpctl nodes` and ListNodes over two namespaces.

Seed example 1 (DP=4: ranks 0-1 on the head, 2-3 on headless node B with -dpr 2) over IPv4
with CURVE; each daemon has its own private system bus (the shipped policy file), as each
machine would. Checks:
  - `dpctl status --json` on the head lists both nodes (the head "local" with ranks 0-1, node-b
    "connected" with ranks 2-3, its address in the head's LAN) and 4 ready ranks with their node
    names; the pids of node B's ranks are the real processes in node B's namespace (node B
    reports them over the node link);
  - `dpctl nodes` (table and --json) says the same;
  - `busctl introspect` shows ListNodes and AssignRanks on org.dpengine1.Manager with their
    signatures; `busctl tree` lists an org.dpengine1.Node object per node, whose properties
    say the same as ListNodes;
  - `dpctl status` on node B shows its own ranks (2 and 3, their pids, ready as the head reports
    it over the node link, and their DP group and activity likewise; their device and served
    counts as the head has them), "Ready ranks: 2/2 on this node" and the head link
    (connected to the head's endpoint, since when);
  - a plain user may read nodes but not assign (access denied, exit 4);
  - the head drains and undrains node B's rank 2 (exit 0), and refuses start, stop and restart
    of it (exit 5, saying where to run them); node B refuses drain and undrain (exit 5), as
    dpctl(1) says;
  - after node B's daemon is stopped (in order, SIGTERM), the head reports node-b as stopped.
"""

import re

from busharness import (MANAGER_INTERFACE, MANAGER_PATH, NOBODY, SERVICE, SystemBus, busctl, dpctl, dpctl_json,
                        introspection_members, rank_by_number, wait_for_name)
from harness import check, check_eq, check_in, log, run_test, slow_factor, wait_until
from netns import Cluster, Network


def node_by_name(nodes: list[dict]) -> dict[str, dict]:
    return {n["name"]: n for n in nodes}


def main() -> None:
    with Network("nv") as net, SystemBus() as bus_a, SystemBus() as bus_b:
        a, b = net.add_nodes("head", "b")
        with Cluster(net, "ipv4") as c:
            head = c.head(a, dp=4, dpl=2, authorized=[("node-b", "2-3")], env=bus_a.env)
            node_b = c.headless(b, "node-b", dp=4, dpl=2, dpr=2, env=bus_b.env)
            c.start_ready(head, node_b)
            check(head.wait_ready_ranks(4, 30), "the head has 4 ready ranks", head.health())
            check(wait_for_name(bus_a, 10) and wait_for_name(bus_b, 10), "both daemons own org.dpengine1 on their bus")

            # The head's view: both nodes, every rank.
            def registered():
                st = dpctl_json(bus_a, "status")
                nodes = node_by_name(st["nodes"])
                return st if "node-b" in nodes and nodes["node-b"]["state"] == "connected" else None
            st = wait_until(registered, 15 * slow_factor(), interval=0.2)
            check(st, "node-b registers with the head over the node link", dpctl(bus_a, "status").stdout)
            log(f"  status --json: {st}")
            check_eq(st["role"], "head", "role")
            check_eq(st["dp_size"], 4, "dp_size")
            nodes = node_by_name(st["nodes"])
            check_eq(sorted(nodes), ["head", "node-b"], "nodes listed by the head")
            check_eq((nodes["head"]["role"], nodes["head"]["state"], nodes["head"]["ranks"], nodes["head"]["count"]),
                     ("head", "local", "0-1", 2), "the head's own entry")
            nb = nodes["node-b"]
            check_eq((nb["role"], nb["state"], nb["start_rank"], nb["count"], nb["ranks"], nb["wanted"]),
                     ("headless", "connected", 2, 2, "2-3", 2), "node-b's entry")
            check(nb["address"] == b.ipv4, f"node-b's address is its LAN address {b.ipv4}", nb)
            check(nb["incarnation"] != 0 and nb["since"] > 0, "node-b has an incarnation and a since time", nb)
            ranks = rank_by_number(st)
            check_eq(sorted(ranks), [0, 1, 2, 3], "ranks listed")
            check_eq({r: ranks[r]["node"] for r in ranks}, {0: "head", 1: "head", 2: "node-b", 3: "node-b"},
                     "each rank's node")
            check_eq({r: ranks[r]["state"] for r in ranks}, {r: "ready" for r in range(4)}, "every rank is ready")
            check_eq(st["ready_ranks"], 4, "ready_ranks")
            # Pids: the head's own from its supervisor, node B's as node B reported them.
            want_pids = {**head.ranks(), **node_b.ranks()}
            check(wait_until(lambda: {r: x["pid"] for r, x in rank_by_number(dpctl_json(bus_a, "status")).items()}
                             == want_pids, 10 * slow_factor(), interval=0.2),
                  "every rank's pid is its real process (node B's reported over the node link)",
                  (dpctl_json(bus_a, "status")["ranks"], want_pids))

            # dpctl nodes, table and JSON.
            listed = node_by_name(dpctl_json(bus_a, "nodes"))
            check_eq({n: (x["state"], x["ranks"]) for n, x in listed.items()},
                     {"head": ("local", "0-1"), "node-b": ("connected", "2-3")}, "dpctl nodes --json")
            table = dpctl(bus_a, "nodes")
            check_eq(table.returncode, 0, "dpctl nodes exits 0")
            lines = table.stdout.rstrip("\n").split("\n")
            check_eq(lines[0].split(), ["NODE", "ROLE", "STATE", "RANKS", "WANTED", "ADDRESS", "SINCE"],
                     "dpctl nodes header")
            check_eq(lines[-1], "2 nodes listed.", "dpctl nodes legend")
            row = next((l for l in lines if l.startswith("node-b ")), "")
            check(re.match(rf"node-b\s+headless\s+connected\s+2-3\s+2\s+{re.escape(b.ipv4)}\s+\d{{4}}-", row),
                  "node-b's row in dpctl nodes", table.stdout)
            text = dpctl(bus_a, "status").stdout
            check_in("node-b", text, "dpctl status on the head shows the nodes table")
            check(re.search(r"^NODE\s+ROLE\s+STATE", text, re.M), "dpctl status prints the nodes table", text)

            # The interface.
            intro = busctl(bus_a, "--xml-interface", "introspect", SERVICE, MANAGER_PATH)
            check_eq(intro.returncode, 0, "busctl introspect exits 0")
            members = introspection_members(intro.stdout, MANAGER_INTERFACE)
            check_eq(members.get("method ListNodes"), ((), ("a(ssssuuutt)",)), "ListNodes signature")
            check_eq(members.get("method AssignRanks"), (("s", "u", "u"), ()), "AssignRanks signature")
            plain = busctl(bus_a, "introspect", SERVICE, MANAGER_PATH)
            check(re.search(r"\.AssignRanks\s+method\s+suu", plain.stdout) and
                  re.search(r"\.ListNodes\s+method\s+-\s+a\(ssssuuutt\)", plain.stdout),
                  "busctl introspect lists the new methods", plain.stdout)

            # One object per node, the name escaped for the path ("node-b" -> "node_2db").
            tree = busctl(bus_a, "tree", "--list", SERVICE)
            check({"/org/dpengine1/node/head", "/org/dpengine1/node/node_2db"} <= set(tree.stdout.split()),
                  "busctl tree lists an object per node", tree.stdout)
            props = busctl(bus_a, "get-property", SERVICE, "/org/dpengine1/node/node_2db", "org.dpengine1.Node",
                           "Name", "State", "StartRank", "Count", "Address")
            check_eq(props.stdout.split("\n")[:5], ['s "node-b"', 's "connected"', "u 2", "u 2", f's "{b.ipv4}"'],
                     "node-b's object: Name, State, StartRank, Count, Address")

            # Access: everyone reads, only root and group dpengine assign.
            check_eq(dpctl(bus_a, "nodes", user=NOBODY).returncode, 0, "a plain user may list the nodes")
            denied = dpctl(bus_a, "assign", "node-b", "--start-rank", "2", "--count", "2", user=NOBODY)
            check_eq(denied.returncode, 4, "a plain user may not assign ranks (exit 4)")
            check_in("access denied", denied.stderr, "the refusal says access denied")

            # Node B's own view: its ranks and the head link.
            st_b = dpctl_json(bus_b, "status")
            log(f"  node B status --json: {st_b}")
            check_eq(st_b["role"], "headless", "node B's role")
            ranks_b = rank_by_number(st_b)
            check_eq(sorted(ranks_b), [2, 3], "node B lists its own ranks")
            check_eq({r: x["pid"] for r, x in ranks_b.items()}, node_b.ranks(), "node B's rank pids")
            check(wait_until(lambda: {r: x["state"] for r, x in rank_by_number(dpctl_json(bus_b, "status")).items()}
                             == {2: "ready", 3: "ready"}, 10 * slow_factor(), interval=0.2),
                  "node B shows its ranks' state as the head reports it (ready)", dpctl_json(bus_b, "status")["ranks"])
            activity = ("group_kind", "group_epoch", "wave", "dummy_step_share", "memory_used")
            check(wait_until(lambda: [{k: x[k] for k in activity} for x in dpctl_json(bus_b, "ranks")]
                             == [{"group_kind": "none", "group_epoch": 0, "wave": 0, "dummy_step_share": 0,
                                  "memory_used": 0}] * 2, 10 * slow_factor(), interval=0.2),
                  "node B shows its ranks' DP group and activity as the head reports it (no group)",
                  dpctl_json(bus_b, "ranks"))
            nodes_b = node_by_name(st_b["nodes"])
            check_eq((nodes_b["node-b"]["ranks"], nodes_b["node-b"]["state"]), ("2-3", "connected"),
                     "node B's own entry")
            head_entry = nodes_b.get("head")
            check(head_entry and head_entry["role"] == "head" and head_entry["state"] == "connected" and
                  head_entry["address"] == c.endpoint() and head_entry["since"] > 0,
                  "node B's head link: connected to the head's endpoint, with a since time", st_b["nodes"])
            # Node B's own status agrees with the head's: ready ranks, device, served requests.
            for i in range(8):
                code, _ = head.complete(f"served before node B's status {i}", max_tokens=2)
                check_eq(code, 200, f"completion {i} on the head")
            head_rows = {r: (x["device"], x["served"]) for r, x in rank_by_number(dpctl_json(bus_a, "ranks")).items()
                         if r in (2, 3)}
            check(sum(served for _, served in head_rows.values()) > 0 and all(d for d, _ in head_rows.values()),
                  "the head has node B's ranks' devices and served requests", head_rows)
            agrees = wait_until(lambda: {r: (x["device"], x["served"])
                                         for r, x in rank_by_number(dpctl_json(bus_b, "ranks")).items()} == head_rows,
                                10 * slow_factor(), interval=0.2)
            check(agrees, "node B shows its ranks' device and served counts as the head has them",
                  (dpctl_json(bus_b, "ranks"), head_rows))
            check_eq(dpctl_json(bus_b, "status")["ready_ranks"], 2, "node B's ready_ranks: its own ready ranks")
            text_b = dpctl(bus_b, "status").stdout
            log(f"  node B dpctl status:\n{text_b}")
            check(re.search(r"^Ready ranks: 2/2 on this node$", text_b, re.M),
                  "dpctl status on node B: Ready ranks: 2/2 on this node", text_b)
            check(re.search(rf"Head link: connected to {re.escape(c.endpoint())} \(node head\)", text_b),
                  "dpctl status on node B shows the head link", text_b)
            rows_b = [l.split() for l in text_b.splitlines() if re.match(r"\s+[23] ready ", l)]
            check(len(rows_b) == 2 and all(row[3] != "-" for row in rows_b),
                  "node B's rank rows name a device", text_b)
            check(re.search(r"^\s*Since: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", text_b, re.M),
                  "... and since when", text_b)
            wrong_place = dpctl(bus_b, "assign", "node-b", "--start-rank", "2", "--count", "2")
            check_eq(wrong_place.returncode, 5, "assign on a headless node is refused (exit 5)")
            check_in("on the head", wrong_place.stderr, "the refusal says where to run it")

            # Where each rank verb acts (dpctl(1), COMMANDS): drain and undrain on the head, for
            # any node's rank; start, stop and restart on the node that runs the rank.
            check_eq(dpctl(bus_a, "drain", "2", "--timeout", "20").returncode, 0, "the head drains node B's rank 2")
            check_eq(rank_by_number(dpctl_json(bus_a, "ranks"))[2]["state"], "draining", "rank 2 drains")
            check_eq(dpctl(bus_a, "undrain", "2").returncode, 0, "the head undrains node B's rank 2")
            for verb in ("start", "stop", "restart"):
                r = dpctl(bus_a, verb, "2")
                check_eq(r.returncode, 5, f"dpctl {verb} 2 on the head is refused (exit 5)")
                check_in("rank 2 does not run on this node (it runs ranks 0, 1); use dpctl on the node that runs it",
                         r.stderr, f"dpctl {verb} 2 on the head: the refusal says where to run it")
            for verb in ("drain", "undrain"):
                r = dpctl(bus_b, verb, "2")
                check_eq(r.returncode, 5, f"dpctl {verb} 2 on node B is refused (exit 5)")
                check_in("drain and undrain are done on the head", r.stderr, f"dpctl {verb} 2 on node B: the reason")
            check(wait_until(lambda: dpctl_json(bus_a, "status")["ready_ranks"] == 4, 10 * slow_factor(),
                             interval=0.2), "every rank ready again", dpctl(bus_a, "ranks").stdout)

            # Node B stops in order: the head reports it stopped (test_multinode_node_stop.py has more).
            check_eq(node_b.stop(), 0, "node B stops cleanly")
            gone = wait_until(lambda: node_by_name(dpctl_json(bus_a, "nodes"))["node-b"]["state"] == "stopped",
                              15 * slow_factor(), interval=0.3)
            check(gone, "the head reports node-b as stopped once it said goodbye", dpctl(bus_a, "nodes").stdout)
            check(head.running(), "the head runs on")
            check_eq(head.stop(), 0, "the head stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=120)
