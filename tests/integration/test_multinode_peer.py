"""Issue 3, test 6: a rank written with another ZeroMQ binding joins and serves.

The head runs DP=1 with no local rank (-dpl 0); the only rank is a scripted peer in another
namespace: python3-zmq (Debian's binding of libzmq, not cppzmq), a DEALER with CURVE using a
key from `dpctl keys generate` listed in the head's authorized_keys, and a stdlib-only msgpack
codec (netns.py). It speaks the documented handshake (daemon/core/wire.hpp, dpengine-protocol(7)):
HELLO → CONFIG → READY, HEARTBEAT every second, and for every REQUEST answers as an engine of
its own with OUTPUTS pieces [id, status, content_type, data, done, tokens]. Checks that the
head becomes ready with the peer as rank 0 of node "node-p" (the node its key names, not what
HELLO says), that CONFIG carries the head's settings, that each REQUEST carries the HTTP
request's path and body byte for byte (fields dpengine does not know included), that HTTP
clients get exactly the response the peer wrote (plain: its status, content type and body;
streaming: its events, one per piece), and that
the rank stays ready past handshake.heartbeat_timeout thanks to its heartbeats. Finally the
peer goes silent and the head declares the rank lost.
"""

import json
import time

import harness
from harness import check, check_eq, log, request, run_test, slow_factor, stream_sse, stream_text
from netns import MODEL, Cluster, Network, Peer, ServingPeer, ready_lines


def produce(body: dict, rid: int) -> list[tuple[str, int]]:
    """The peer's "model": the prompt's words reversed and upper-cased, one word per step,
    then the request id, cut to max_tokens steps."""
    words = [w.upper() for w in reversed(str(body["prompt"]).split())] + [f"#{rid}"]
    return [(" " + w, 1) for w in words][:max(1, int(body.get("max_tokens", 16)))]


def expected(prompt: str, rid: int, max_tokens: int) -> str:
    return "".join(t for t, _ in produce({"prompt": prompt, "max_tokens": max_tokens}, rid))


def main() -> None:
    with Network("pe") as net:
        a, p = net.add_nodes("head", "p")
        with Cluster(net, "ipv6", handshake={"heartbeat_interval": 1.0, "heartbeat_timeout": 3.0}) as c:
            head = c.head(a, dp=1, dpl=0, authorized=[("node-p", "0-0")])
            head.start()
            check(head.wait_ready_ranks(0, 15), "the head serves /health with no rank yet", head.health())
            peer = Peer(p, c.endpoint(), c.key("node-p"), c.key("head").public, name="python3-zmq rank")
            serving = ServingPeer(peer, 0, produce, heartbeat=1.0, node="says-something-else").start()
            try:
                check(serving.ready.wait(15 * slow_factor()), "the peer got CONFIG and sent READY", serving.errors)
                cfg = serving.config.body
                log(f"  CONFIG: {serving.config}")
                check_eq((cfg.get("dp_size"), cfg.get("rank")), (1, 0), "CONFIG dp_size and rank")
                check_eq(cfg.get("engine", {}).get("model"), MODEL, "CONFIG engine.model")
                check_eq(cfg.get("heartbeat_interval"), 1.0, "CONFIG heartbeat_interval")
                head.wait_ready(15)  # at once: this head has no ranks of its own (-dpl 0)
                check(head.wait_ready_ranks(1, 15), "the head has the peer's rank 0 ready", head.health())
                check_eq(ready_lines(head), {0: "node-p"}, "rank 0 is ready on node-p (the node its key names)")
                check_eq(head.health(), {"status": "ok", "ready_ranks": 1, "ranks": 1}, "/health")

                # plain completions: the body reaches the peer byte for byte, its answer the client
                for i, (prompt, max_tokens, seed) in enumerate([("hello from the other binding", 16, 5),
                                                                ("one two three four five", 3, 0),
                                                                ("x", 1, 42)]):
                    sent = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "seed": seed,
                                       "x_vendor": {"keep": [1, 2.50]}}, separators=(",", ": ")).encode()
                    r = head.ns.call(request, head.port, "POST", "/v1/completions", sent,
                                     {"Content-Type": "application/json"}, 30)
                    check_eq(r.status, 200, f"completion {i}: HTTP status")
                    got = serving.requests[-1]
                    check_eq((got["path"], bytes(got["body"])), ("/v1/completions", sent),
                             f"completion {i}: the REQUEST carries the path and the client's body unchanged")
                    check_eq(r.headers.get("content-type"), "application/json", f"completion {i}: the peer's content type")
                    body = json.loads(r.body)
                    check_eq(body["id"], f"peer-{got['id']}", f"completion {i}: the response is the peer's own")
                    check_eq(body["choices"][0]["text"], expected(prompt, got["id"], max_tokens),
                             f"completion {i}: the text is exactly what the peer produced")
                    check_eq(body["usage"]["completion_tokens"], len(produce(json.loads(sent), got["id"])),
                             f"completion {i}: completion_tokens")

                # streaming: the peer's events, one per piece
                prompt = "stream these words back please"
                events = head.ns.call(stream_sse, head.port, "/v1/completions",
                                      {"model": MODEL, "prompt": prompt, "max_tokens": 10, "stream": True})
                got = serving.requests[-1]
                check(got["stream"] is True, "the REQUEST says it streams", got)
                check_eq(stream_text(events), expected(prompt, got["id"], 10), "the streamed text is the peer's")
                check_eq(len(events), len(produce({"prompt": prompt, "max_tokens": 10}, got["id"])) + 1,
                         "one event per piece the peer sent, then [DONE]")
                check_eq(events[-1], harness.DONE, "the stream ends with [DONE]")

                # heartbeats keep the idle rank alive past heartbeat_timeout
                time.sleep(4.5)
                check_eq(head.ready_ranks(), 1, "after 4.5 s idle (heartbeat_timeout 3 s) the peer is still ready")
                status, body = head.complete("still there", max_tokens=4)
                check(status == 200 and body["choices"][0]["text"] == expected("still there", serving.requests[-1]["id"], 4),
                      "and it still serves", body)
                check(not serving.errors, "the peer saw no error", serving.errors)
            finally:
                serving.stop()
            # silence: the head notices within heartbeat_timeout (+ its 250 ms check)
            t0 = time.monotonic()
            check(head.wait_ready_ranks(0, 10), "a silent peer is declared lost", head.health())
            log(f"  declared lost {time.monotonic() - t0:.1f} s after the peer went silent")
            check(head.wait_log(r"rank 0 \(node 'node-p'\) went silent.*\[heartbeat-timeout\]", 5),
                  "the head logs why (heartbeat-timeout)")
            peer.close()
            check_eq(head.stop(), 0, "the head stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=60)
