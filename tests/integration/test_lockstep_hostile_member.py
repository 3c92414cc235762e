"""Lockstep mode: a hostile DP group member can neither publish another member's rendezvous key
nor hold the group's formation up forever.

A head with DP=3 in lockstep mode (gloo), ranks 0 and 1 local, rank 2 a scripted peer
(python3-zmq, CURVE over TCP from another namespace, its key reserving rank 2 in the head's
authorized_keys) that registers, reports READY and sends heartbeats,
and on every GROUP_FORM that includes it publishes "pair-0-1" (member 0's address for member 1)
with a value of its own, while it withholds its own keys ("pair-2-0", "pair-2-1").
  - The forged key is refused: the peer gets ERROR "group-key-not-owned", and the head logs it.
  - Once it has stalled every formation for longer than an honest member can be held up
    (handshake.heartbeat_timeout + 2 x group_timeout, 5 s here), the head names rank 2 as the
    member that stalled them (the keys it withheld, reason group-stalled), fails it,
    and forms the group of ranks 0 and 1, which serves completions with the synthetic
    backend's exact text.
  - The group then stays formed: no new epoch in the seconds that follow (before, the group
    re-formed every group_timeout forever).
"""

import re
import threading
import time

import faults
import harness
from harness import check, check_eq, log, run_test, slow_factor, wait_until
from netns import ERROR, HEARTBEAT, REFUSED, Cluster, Network, Peer

GROUP_KV, GROUP_FORM = 25, 27


def main() -> None:
    with Network("lh") as net:
        a, p = net.add_nodes("head", "p")
        # The default engine (model "synthetic", no step time).
        with Cluster(net, "ipv4", engine={"model": "synthetic", "step_time_ms": 0}) as c:
            d = c.head(a, dp=3, dpl=2, authorized=[("hostile", "2-2")],
                       config={"data_parallel": {"dp_sync": "lockstep", "group": "gloo"},
                               "handshake": {"heartbeat_interval": 0.5, "heartbeat_timeout": 2.0}})
            d.start()
            with Peer(p, c.endpoint(), c.key("hostile"), c.key("head").public, name="hostile member") as peer:
                hostile_member(d, peer)
            check_eq(d.stop(), 0, "exit status after SIGTERM")


def hostile_member(d, peer: Peer) -> None:
    """Rank 2 on `peer`: it forges member 0's key and withholds its own."""
    check(wait_until(lambda: all(faults.rank_states(d.port, d.ns).get(r) == "ready" for r in (0, 1)),
                     30 * slow_factor(), 0.1), "the local ranks are ready", faults.rank_states(d.port, d.ns))
    epoch = peer.join(2, 15 * slow_factor(), node="hostile")
    stop = threading.Event()
    forms: list = []
    errors: list = []
    refused: list = []

    def run() -> None:
        next_beat = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_beat:
                peer.send(HEARTBEAT, {"progress": 0, "running": 0, "waiting": 0}, epoch)
                next_beat = time.monotonic() + 0.5
            m = peer.recv(0.1)
            if m is None:
                continue
            if m.type == GROUP_FORM and 2 in m.body.get("members", []):
                forms.append(m.body)
                # Member 0's address for member 1, from rank 2; its own keys never come.
                peer.send(GROUP_KV, {"group_epoch": m.body["group_epoch"], "key": "pair-0-1",
                                     "value": "00" * 16}, m.epoch)
            elif m.type == ERROR:
                errors.append(m.body)
            elif m.type == REFUSED:
                refused.append(m.body)
                return  # the head no longer takes this rank: it does not come back
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        check(wait_until(lambda: forms, 15 * slow_factor(), 0.05), "the head formed a group with the scripted rank")
        check(wait_until(lambda: errors, 10 * slow_factor(), 0.05), "the forged key is answered with ERROR")
        check_eq(errors[0].get("code"), "group-key-not-owned",
                 "the error's code")
        check(d.wait_log(r"rank 2: the DP group's rendezvous key 'pair-0-1' of epoch \d+ belongs to member 0 "
                         r"\(rank 0\), not to member 2 \(rank 2\) \[group-key-not-owned\]", 5),
              "the head logs the forged key")
        check(d.wait_log(r"rank 2 has not published its DP group rendezvous key\(s\) 'pair-2-0', 'pair-2-1' of "
                         r"epoch \d+ within data_parallel.group_timeout", 10 * slow_factor()),
              "the first stall is logged, not yet failed")
        check(faults.wait_event(d.port, 2, "group-stalled", 1, 30, ns=d.ns),
              "the member that withheld its keys is failed as group-stalled", faults.rank_events(d.port, d.ns))
        check(d.wait_log(r"rank 2 \(node 'hostile'\) stalled the DP group's formation \(epoch \d+, member 2 of 3\): "
                         r"it did not publish its rendezvous key\(s\) 'pair-2-0', 'pair-2-1' within "
                         r"data_parallel.group_timeout \(1.5 s\), nor in any of the \d+ formation\(s\) of the last", 5),
              "the head's log names the stalling rank and the keys it withheld")

        log("--- the group of ranks 0 and 1 forms and serves")
        for i in range(4):
            status, body = d.post_json("/v1/completions",
                                       {"model": "synthetic", "prompt": f"group {i}", "max_tokens": 4}, timeout=30)
            check_eq(status, 200, f"completion {i}")
            check_eq(body["choices"][0]["text"], harness.synthetic_text(f"group {i}", 0, 4), "its text")
        epochs = lambda: re.findall(r"DP group epoch (\d+):", d.log_text())  # noqa: E731
        settled = epochs()
        log(f"  formations so far: {settled}")
        check(re.search(r"DP group epoch \d+: 2 rank\(s\) \[0,1\]", d.log_text()), "the group of ranks 0 and 1 formed")
        time.sleep(5)
        check_eq(epochs(), settled, "no new formation follows (the group does not re-form forever)")
        check(len(forms) >= 2, "the scripted rank was in two formations or more", len(forms))
    finally:
        stop.set()
        thread.join(5)


if __name__ == "__main__":
    run_test(main, timeout=120)
