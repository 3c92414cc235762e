"""Lockstep mode across two nodes in network namespaces: DP=4, ranks 0-1 on the head, 2-3 on
node B, CURVE between the nodes. The gloo DP group meets through the head's rendezvous (over
the ranks' authenticated connections) and connects the ranks over TCP on each node's own
address; a single client's requests (one rank busy at a time) all come back right, the ranks
on node B step on dummy batches while ranks on the head work (and the other way round), and
every rank reports the same group epoch; `dpctl ranks` on node B shows its ranks in that gloo
group as the head reports them over the node link.
"""

from busharness import SystemBus, dpctl_json
from harness import check, check_eq, log, parse_metric_samples, run_test, synthetic_completion, wait_until
from netns import Cluster, Network

REQUESTS = 8
MAX_TOKENS = 10


def main() -> None:
    with Network("ls") as net, SystemBus() as bus_b:
        a = net.add_node("head")
        b = net.add_node("b")
        net.wait_reachable(b, a)
        with Cluster(net, "ipv4", engine={"step_time_ms": 2}) as c:
            lockstep = {"data_parallel": {"dp_sync": "lockstep"}}
            head = c.head(a, dp=4, dpl=2, authorized=[("node-b", "2-3")], config=lockstep)
            node_b = c.headless(b, "node-b", dp=4, dpl=2, dpr=2, env=bus_b.env)
            head.start()
            node_b.start()
            head.wait_ready(30)
            node_b.wait_ready(30)
            check(head.wait_ready_ranks(4, 30), "the head has 4 ready ranks", head.health())
            check(head.wait_log(r"DP group epoch \d+: 4 rank\(s\) \[0,1,2,3\], gloo", 30),
                  "the head forms one group of the four ranks on both nodes", head.log_text()[-3000:])
            # Each rank binds the group's TCP connections to its own node's address.
            for d, ns, ranks in ((head, a, (0, 1)), (node_b, b, (2, 3))):
                for r in ranks:
                    check(d.wait_log(rf"rank {r}: .*lockstep mode: gloo DP group on {ns.ipv4}\b", 20),
                          f"rank {r} uses {ns.ipv4} for the group", d.log_text()[-2000:])

            def metrics(name: str) -> dict[int, float]:
                r = head.request("GET", "/metrics", timeout=10)
                check_eq(r.status, 200, "/metrics status")
                return {int(labels["rank"]): v for labels, v in parse_metric_samples(r.body.decode(), name)}

            def formed() -> bool:
                states = {int(labels["rank"]): labels["state"] for labels, _ in
                          parse_metric_samples(head.request("GET", "/metrics", timeout=10).body.decode(),
                                               "dpengine_rank_group")}
                epochs = set(metrics("dpengine_rank_group_epoch").values())
                return len(states) == 4 and set(states.values()) <= {"running", "paused"} and len(epochs) == 1
            check(wait_until(formed, 30, 0.3), "every rank joins the group", metrics("dpengine_rank_group_epoch"))

            problems = []
            for i in range(REQUESTS):
                prompt = f"lockstep across nodes {i}"
                status, body = head.complete(prompt, max_tokens=MAX_TOKENS, seed=i)
                want = synthetic_completion(prompt, i, MAX_TOKENS).text
                if status != 200 or body["choices"][0]["text"] != want:
                    problems.append(f"request {i}: HTTP {status}: {body}")
            check(not problems, f"{REQUESTS} requests, one at a time, all correct", problems)

            def stepped():
                dummy = metrics("dpengine_rank_dummy_steps")
                real = metrics("dpengine_rank_lockstep_steps")
                if len(dummy) == 4 and all(dummy[r] > 0 and real[r] > 0 for r in range(4)):
                    return dummy, real
                return None
            seen = wait_until(stepped, 15, 0.3)
            check(seen, "every rank on both nodes took real and dummy lockstep steps",
                  (metrics("dpengine_rank_dummy_steps"), metrics("dpengine_rank_lockstep_steps")))
            if seen:
                log(f"  dummy steps per rank {seen[0]}, real steps {seen[1]}")
            epochs = metrics("dpengine_rank_group_epoch")
            check(len(set(epochs.values())) == 1, "one group epoch on every rank", epochs)
            # The headless node's own status: the head's view of its ranks' group.
            epoch = int(next(iter(epochs.values())))
            shown = wait_until(lambda: {x["rank"]: (x["group_kind"], x["group_epoch"]) for x in dpctl_json(bus_b, "ranks")}
                               == {2: ("gloo", epoch), 3: ("gloo", epoch)}, 10, 0.3)
            check(shown, f"dpctl ranks on node B shows ranks 2-3 in the gloo group of epoch {epoch}",
                  dpctl_json(bus_b, "ranks"))
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=120)
