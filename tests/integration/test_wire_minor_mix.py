"""A head serves ranks one protocol minor older and one newer (dpengine-protocol(7), Versions).

The head runs DP=2 with no local rank (-dpl 0); both ranks are scripted python3-zmq peers
(netns.py's stdlib msgpack codec, not the daemon's encoder), as in a rolling upgrade:
  - rank 0 speaks the previous minor: every message's header says it, and its HELLO has no
    field that minor lacks (no pid);
  - rank 1 speaks the next minor: every message's header says it, every body carries a field
    the head has never heard of, and every OUTPUTS item an element after the known six.
Checks that both register (CONFIG) and become ready, that requests go to both and their
answers reach the HTTP clients unchanged, that no peer is sent an ERROR or REFUSED, and
that the head logs no malformed message.
"""

from harness import check, check_eq, run_test, slow_factor
from netns import ERROR, OUTPUTS, PROTOCOL, REFUSED, Cluster, Network, Peer, ServingPeer


class PeerAtMinor(Peer):
    """A Peer whose messages say protocol PROTOCOL[0].`minor`; with `unknown_fields`, bodies
    carry a key and OUTPUTS items an element from that (newer) minor."""

    def __init__(self, *args, minor: int, unknown_fields: bool, **kwargs):
        super().__init__(*args, **kwargs)
        self.minor = minor
        self.unknown_fields = unknown_fields

    def send(self, type_, body, epoch=0, major=PROTOCOL[0], minor=PROTOCOL[1]) -> None:
        if self.unknown_fields and isinstance(body, dict):
            body = dict(body, **{f"added_in_{major}_{self.minor}": [1, "unknown to the head"]})
            if type_ == OUTPUTS:
                body["items"] = [item + ["appended in a later minor"] for item in body["items"]]
        super().send(type_, body, epoch, major, self.minor)


def produce(body: dict, rid: int) -> list[tuple[str, int]]:
    return [(" " + w, 1) for w in str(body["prompt"]).split()][:max(1, int(body.get("max_tokens", 16)))]


def main() -> None:
    older, newer = PROTOCOL[1] - 1, PROTOCOL[1] + 1
    with Network("mm") as net:
        a, p = net.add_nodes("head", "p")
        with Cluster(net, "ipv6") as c:
            head = c.head(a, dp=2, dpl=0, authorized=[("node-old", "0-0"), ("node-new", "1-1")])
            head.start()
            check(head.wait_ready_ranks(0, 15), "the head serves /health with no rank yet", head.health())
            peers = {
                older: PeerAtMinor(p, c.endpoint(), c.key("node-old"), c.key("head").public,
                                   name=f"rank 0 at {PROTOCOL[0]}.{older}", minor=older, unknown_fields=False),
                newer: PeerAtMinor(p, c.endpoint(), c.key("node-new"), c.key("head").public,
                                   name=f"rank 1 at {PROTOCOL[0]}.{newer}", minor=newer, unknown_fields=True),
            }
            serving = {older: ServingPeer(peers[older], 0, produce).start(),
                       newer: ServingPeer(peers[newer], 1, produce).start()}
            try:
                for minor, s in serving.items():
                    check(s.ready.wait(15 * slow_factor()), f"the {PROTOCOL[0]}.{minor} peer got CONFIG and sent READY",
                          s.errors)
                    check_eq(s.config.minor, PROTOCOL[1], f"the head answers the {PROTOCOL[0]}.{minor} peer in its own minor")
                check(head.wait_ready_ranks(2, 15), "both ranks are ready", head.health())

                for i in range(6):
                    prompt = f"request {i} of a mixed cluster"
                    status, body = head.complete(prompt, max_tokens=4)
                    check_eq(status, 200, f"request {i}: HTTP status")
                    check_eq(body["choices"][0]["text"], "".join(t for t, _ in produce({"prompt": prompt, "max_tokens": 4}, 0)),
                             f"request {i}: the peer's text")
                for minor, s in serving.items():
                    check(len(s.requests) >= 1, f"the {PROTOCOL[0]}.{minor} peer served requests", len(s.requests))
                    check(not s.errors, f"the {PROTOCOL[0]}.{minor} peer saw no error", s.errors)
                    refusals = [m for m in s.log if m.type in (ERROR, REFUSED)]
                    check_eq(refusals, [], f"the head sent the {PROTOCOL[0]}.{minor} peer no ERROR or REFUSED")
                check(not head.wait_log(r"malformed|version-mismatch|unknown-type", 0.5),
                      "the head logs no message it could not use")
            finally:
                for s in serving.values():
                    s.stop()
                for peer in peers.values():
                    peer.close()
            check_eq(head.stop(), 0, "the head stops cleanly")
            c.check_logs_clean()


if __name__ == "__main__":
    run_test(main, timeout=60)
