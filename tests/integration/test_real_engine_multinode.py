"""dpengine in front of a real engine across two nodes: DP=2, the head (rank 0) in one network
namespace and a headless node (rank 1) in another, CURVE-authenticated (faults.two_node_cluster).
Only the head's config holds the engine settings (engine.backend = "http", llama-cpp-python's
server on a tiny model the test writes into a temp directory both nodes read); node B's rank
gets them from the head and starts the same server command in its namespace.

Each request of a subset of test_real_engine's matrix (completions, streamed with include_usage,
chat, streamed, chat logprobs with top_logprobs, a request the engine rejects, a prompt longer
than the context) goes to the head, and its twin right after it to a reference server the test
runs itself in the root namespace (the same model file and command): deterministic requests
(temperature 0 or a seed) give identical answers, so each answer through the head must equal the
reference's apart from "id" and "created" (plain HTTP: status, Content-Type and body bytes, a
stream event by event; the openai SDK: the parsed answer or chunks). Which rank finished each
request is read from the head's dpengine_rank_requests_total after it: the head's round robin
alternates ranks, and the second round puts the SDK first, so each case must have been answered
by both ranks, by plain HTTP and by the SDK; the ranks finished every request, and each server's
log (node B's in node B's daemon log) holds as many POSTs as its rank finished. Everything is
in the test's namespaces or on loopback.
"""

import os
import shutil
import tempfile

import llamaserver

llamaserver.require_venv()  # re-executes in build-venv's Python, which has the openai SDK

import faults  # noqa: E402
from harness import (TestFailure, check, check_eq, children_of, cmdline, log, parse_metric_samples,  # noqa: E402
                     run_test, slow_factor, wait_until)
from realengine import Comparer, Endpoint, case_checks, engine_config, matrix  # noqa: E402

SUBSET = ["completion", "completion streamed with include_usage", "chat", "chat streamed",
          "chat with logprobs and top_logprobs", "rejected by the engine (top_p 2)",
          "a prompt longer than the context"]
ROUNDS = 2  # each case twice: with the round robin, both ranks answer each by plain HTTP and by the SDK


def server_of(rank_pid: int) -> int | None:
    """The pid of the llama server a rank process started."""
    for child in children_of(rank_pid):
        args = cmdline(child)
        if args and os.path.realpath(args[0]) == os.path.realpath(llamaserver.venv_python()):
            return child
    return None


def net_ns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def requests_per_rank(head) -> dict[int, float]:
    """dpengine_rank_requests_total of the head's /metrics, {rank: requests finished}."""
    r = head.request("GET", "/metrics")
    if r.status != 200:
        raise TestFailure(f"the head's /metrics: HTTP {r.status}")
    return {int(labels["rank"]): value
            for labels, value in parse_metric_samples(r.body.decode(), "dpengine_rank_requests")}


class TrackedHead(Endpoint):
    """The head, from its namespace, noting which rank finished each request (the one whose
    dpengine_rank_requests_total grew): .last_rank, None when that was not one rank."""

    def __init__(self, head, ns):
        super().__init__("head", head.port, ns=ns)
        self.head = head
        self.served = requests_per_rank(head)
        self.requests = 0
        self.last_rank = None

    def _finished(self) -> None:
        self.requests += 1
        expected = sum(self.served.values()) + 1
        # A stream the SDK closed at its [DONE] is counted once the engine's response ended,
        # a moment after the client has it all.
        now = wait_until(lambda: (lambda n: n if sum(n.values()) >= expected else None)(requests_per_rank(self.head)),
                         5 * slow_factor(), 0.02)
        if now is None:
            raise TestFailure(f"request {self.requests} through the head was not counted as finished by a rank "
                              f"(dpengine_rank_requests_total: {requests_per_rank(self.head)})")
        grown = [r for r in now if now[r] > self.served.get(r, 0)]
        self.last_rank = grown[0] if len(grown) == 1 and sum(now.values()) == expected else None
        self.served = now

    def raw(self, path, body):
        out = super().raw(path, body)
        self._finished()
        return out

    def sdk(self, kind, kwargs):
        out = super().sdk(kind, kwargs)
        self._finished()
        return out


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="dpe-real-mn-")
    try:
        model = llamaserver.write_model(os.path.join(tmp, "tiny.gguf"))
        with llamaserver.start_server(model, log_path=os.path.join(tmp, "reference.log")) as ref, \
                faults.two_node_cluster("re", head_config={"engine": engine_config(model)},
                                        ready_timeout=90) as (a, b, c, head, node_b):
            check(head.wait_ready_ranks(2, 90), "both ranks ready (the head's /health)")
            ranks_a, ranks_b = head.ranks(), node_b.ranks()
            check(sorted(ranks_a) == [0] and sorted(ranks_b) == [1], "rank 0 on the head's node, rank 1 on node B",
                  (ranks_a, ranks_b))
            servers = {0: server_of(ranks_a[0]), 1: server_of(ranks_b[1])}
            check(all(servers.values()), "each rank runs llama-cpp-python's server", servers)
            for rank, ns in ((0, a), (1, b)):
                with ns.entered():
                    here = os.stat("/proc/thread-self/ns/net").st_ino
                check_eq(net_ns(servers[rank]), here, f"rank {rank}'s server runs in {ns.name}")
            log(f"  servers: {servers}; reference server on 127.0.0.1:{ref.port} (root namespace)")

            routed = TrackedHead(head, a)
            reference = Endpoint("reference", ref.port)
            cmp = Comparer(routed, reference, alternate=False)
            cases = {case.name: case for case in matrix()}
            answered: dict[tuple[str, str], set] = {}
            for round_ in range(ROUNDS):
                # The round robin alternates ranks: with the SDK first in the second round, each
                # case goes to both ranks by plain HTTP and by the SDK.
                log(f"--- round {round_ + 1} of {ROUNDS}")
                for name in SUBSET:
                    case = cases[name]
                    for how in (("raw", "sdk") if round_ % 2 == 0 else ("sdk", "raw")):
                        if how == "raw":
                            r, dr = cmp.raw(case)
                            case_checks(case, r, dr, reference)
                        else:
                            cmp.sdk(case)
                        answered.setdefault((name, how), set()).add(routed.last_rank)
                        log(f"  (answered by rank {routed.last_rank})")
            served = routed.served
            log(f"  requests finished per rank: {served}")
            check_eq(sum(served.values()), routed.requests, "requests the ranks finished (dpengine_rank_requests_total)")
            check(all(answered[key] == {0, 1} for key in answered),
                  "each case was answered by both ranks, by plain HTTP and by the SDK",
                  {k: v for k, v in answered.items() if v != {0, 1}})
            for rank, d in ((0, head), (1, node_b)):
                pattern = rf'\[rank {rank} server\] .*"POST /v1/(chat/)?completions HTTP/1\.1"'
                posts = wait_until(lambda: (lambda n: n if n >= served[rank] else None)(len(d.log_lines(pattern))),
                                   5 * slow_factor())
                check_eq(posts, served[rank], f"requests in the log of rank {rank}'s server ({d.name}'s log)")
            check(head.running() and node_b.running(), "both daemons still run")
            c.check_logs_clean()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_test(main, timeout=150)
