"""Lockstep mode on CPUs: DP=4 with a gloo DP group formed through the head's rendezvous.

A single client sends its requests one after another, so only one rank has work at a time (the
front-end spreads them round-robin); the idle ranks must step with it on dummy batches
(dpengine_rank_dummy_steps_total grows on every rank), the group pauses between requests and
wakes for the next one (the wave number grows), and every text equals what independent mode
returns for the same requests (the synthetic backend is deterministic). A concurrent burst then
runs with the all-reduce batched every 8 steps (data_parallel.sync_interval) and must give the
same texts again.
"""

import threading

from harness import (Daemon, check, check_eq, log, per_rank_metric, metric_samples, post_json, run_test,
                     stream_sse_full, stream_text, synthetic_completion, wait_until)

DP = 4
SEQUENTIAL = 8
BURST = 12
MAX_TOKENS = 12


def config(sync: str, interval: int = 1) -> dict:
    return {"data_parallel": {"size": DP, "dp_sync": sync, "sync_interval": interval},
            "engine": {"step_time_ms": 2.0}}


def ask(port: int, i: int, stream: bool = False) -> str:
    body = {"prompt": f"lockstep request {i}", "max_tokens": MAX_TOKENS, "seed": i}
    if stream:
        s = stream_sse_full(port, "/v1/completions", body | {"stream": True}, timeout=30)
        check(s.status == 200 and s.done, f"stream {i} completes", s.events[-3:])
        return stream_text(s.events, 0, False)
    status, r = post_json(port, "/v1/completions", body, timeout=30)
    check_eq(status, 200, f"request {i} status")
    return r["choices"][0]["text"]


def burst(port: int) -> dict[int, str]:
    texts: dict[int, str] = {}
    errors: list[str] = []

    def one(i: int) -> None:
        try:
            texts[i] = ask(port, i, stream=i % 2 == 0)
        except Exception as e:  # noqa: BLE001 - judged below
            errors.append(f"{i}: {e}")

    threads = [threading.Thread(target=one, args=(SEQUENTIAL + i,)) for i in range(BURST)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    check(not errors and len(texts) == BURST, "every burst request completes", errors)
    return texts


def group_view(port: int) -> dict[int, tuple[str, str]]:
    return {int(labels["rank"]): (labels["kind"], labels["state"])
            for labels, _ in metric_samples(port, "dpengine_rank_group")}


def main() -> None:
    with Daemon(config("independent"), name="lockstep-reference") as d:
        d.wait_ready(30)
        reference = {i: ask(d.port, i) for i in range(SEQUENTIAL)}
        reference |= burst(d.port)
        check_eq(group_view(d.port), {}, "independent mode forms no DP group")
    for i, text in reference.items():
        check_eq(text, synthetic_completion(f"lockstep request {i}", i, MAX_TOKENS).text, f"reference text {i}")

    with Daemon(config("lockstep"), name="lockstep") as d:
        d.wait_ready(30)
        check(d.wait_log(r"DP group epoch \d+: 4 rank\(s\) \[0,1,2,3\], gloo", 30), "the head forms a group of 4")

        def formed() -> bool:
            view = group_view(d.port)
            epochs = set(per_rank_metric(d.port, "dpengine_rank_group_epoch").values())
            return len(view) == DP and all(k == "gloo" and s in ("running", "paused") for k, s in view.values()) \
                and len(epochs) == 1
        check(wait_until(formed, 30, 0.3), "every rank joins the gloo group", group_view(d.port))
        waves_before = per_rank_metric(d.port, "dpengine_rank_wave")
        texts = {}
        for i in range(SEQUENTIAL):
            texts[i] = ask(d.port, i, stream=i % 2 == 1)
        check_eq(texts, {i: reference[i] for i in range(SEQUENTIAL)}, "sequential texts equal independent mode's")

        # Group reports come once per heartbeat interval.
        def reported() -> dict | None:
            dummy = per_rank_metric(d.port, "dpengine_rank_dummy_steps")
            real = per_rank_metric(d.port, "dpengine_rank_lockstep_steps")
            if len(dummy) == DP and all(dummy[r] > 0 for r in range(DP)) and sum(real.values()) >= SEQUENTIAL * MAX_TOKENS:
                return {"dummy": dummy, "real": real}
            return None

        seen = wait_until(reported, 15, 0.3)
        check(seen, "every rank reports dummy steps, and the real steps add up",
              {"dummy": per_rank_metric(d.port, "dpengine_rank_dummy_steps"),
               "real": per_rank_metric(d.port, "dpengine_rank_lockstep_steps")})
        log(f"lockstep steps per rank: real {seen['real']}, dummy {seen['dummy']}")
        # One request at a time: while one rank works, the three others run dummy steps.
        check(sum(seen["dummy"].values()) >= 2 * SEQUENTIAL * MAX_TOKENS, "idle ranks stepped with the busy one",
              seen)
        waves = per_rank_metric(d.port, "dpengine_rank_wave")
        check(min(waves[r] - waves_before[r] for r in range(DP)) >= SEQUENTIAL // 2,
              "the group paused between requests and woke for the next (waves)", (waves_before, waves))
        paused = wait_until(lambda: set(group_view(d.port).values()) == {("gloo", "paused")}, 15, 0.3)
        check(paused, "idle ranks pause", group_view(d.port))
        epochs = per_rank_metric(d.port, "dpengine_rank_group_epoch")
        check(len(set(epochs.values())) == 1 and min(epochs.values()) > 0, "one group epoch on every rank", epochs)

    with Daemon(config("lockstep", 8), name="lockstep-k8") as d:
        d.wait_ready(30)
        check(d.wait_log(r"DP group epoch \d+: 4 rank\(s\)", 30), "the head forms a group of 4")
        texts = burst(d.port)
        check_eq(texts, {i: reference[i] for i in texts}, "burst texts with sync_interval 8 equal independent mode's")


if __name__ == "__main__":
    run_test(main, timeout=150)
