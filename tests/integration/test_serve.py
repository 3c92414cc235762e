"""Acceptance 2: a single node with DP=2 (synthetic backend) serves the OpenAI API.

Starts dpengined from a temp config, waits for READY=1 on its notify socket, then sends 200
concurrent completions (half streaming, /v1/completions and /v1/chat/completions, various
prompts, seeds and max_tokens) and checks every answer against the synthetic backend's
documented output, usage and finish_reason; checks that both ranks did work; then stop
strings, n>1, include_usage, token-id prompts, /v1/models, /health, keep-alive, the notify
messages (STATUS=, READY=1, WATCHDOG=1, STOPPING=1) and a clean exit.
"""

import http.client
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

from harness import (DONE, HOST, Daemon, check, check_eq, expect, socket_inodes, chat_prompt, cpu_ns, get, log, post_json,
                     run_test, stream_finish_reason, stream_sse, stream_sse_full, stream_text,
                     synthetic_completion, synthetic_pieces, voluntary_switches)

MODEL = "synthetic-test"
REQUESTS = 200
WORKERS = 50
WORDS = ["alpha", "beta", "gamma", "delta", "héllo", "wörld", "☃", "data", "parallel", "engine",
         "the", "quick", "brown", "fox", "tab\there", "new\nline"]


def make_spec(i: int) -> dict:
    rng = random.Random(1000 + i)
    chat = i % 4 >= 2
    stream = i % 2 == 1
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    body: dict = {"model": MODEL, "stream": stream}
    if chat:
        messages = [{"role": "user", "content": words}]
        if rng.random() < 0.4:
            messages.insert(0, {"role": "system", "content": "be brief"})
        if rng.random() < 0.3:
            messages[-1]["content"] = [{"type": "text", "text": words}, {"type": "text", "text": " more"}]
        body["messages"] = messages
        prompt = chat_prompt(messages)
    else:
        body["prompt"] = words
        prompt = words
    seed = 0
    r = rng.random()
    if r < 0.7:
        seed = rng.randint(-2**63, 2**63 - 1) if r < 0.2 else rng.randint(0, 1000)
        body["seed"] = seed
    max_tokens = 16
    if rng.random() < 0.8:
        max_tokens = rng.randint(1, 48)
        key = "max_completion_tokens" if chat and rng.random() < 0.3 else "max_tokens"
        body[key] = max_tokens
    if stream and rng.random() < 0.3:
        body["stream_options"] = {"include_usage": True}
    path = "/v1/chat/completions" if chat else "/v1/completions"
    return {"i": i, "path": path, "body": body, "chat": chat, "stream": stream,
            "expected": synthetic_completion(prompt, seed, max_tokens)}


def verify_response(spec: dict, status: int, resp) -> str | None:
    exp, chat = spec["expected"], spec["chat"]
    if status != 200:
        return f"HTTP {status}: {resp}"
    want_object = "chat.completion" if chat else "text_completion"
    if resp.get("object") != want_object or resp.get("model") != MODEL:
        return f"object/model: {resp.get('object')!r} {resp.get('model')!r}"
    if not str(resp.get("id", "")).startswith("chatcmpl-" if chat else "cmpl-"):
        return f"id {resp.get('id')!r}"
    choices = resp.get("choices") or []
    if len(choices) != 1 or choices[0].get("index") != 0:
        return f"choices: {choices}"
    c = choices[0]
    if chat:
        msg = c.get("message") or {}
        if msg.get("role") != "assistant":
            return f"message role {msg.get('role')!r}"
        text = msg.get("content")
    else:
        text = c.get("text")
    if text != exp.text:
        return f"text {text!r} != expected {exp.text!r}"
    if c.get("finish_reason") != exp.finish_reason:
        return f"finish_reason {c.get('finish_reason')!r} != {exp.finish_reason!r}"
    usage = {"prompt_tokens": exp.prompt_tokens, "completion_tokens": exp.completion_tokens,
             "total_tokens": exp.prompt_tokens + exp.completion_tokens}
    if resp.get("usage") != usage:
        return f"usage {resp.get('usage')} != {usage}"
    return None


def verify_stream(spec: dict, s) -> str | None:
    exp, chat = spec["expected"], spec["chat"]
    if s.status != 200:
        return f"HTTP {s.status}: {s.events}"
    if s.error:
        return f"transport: {s.error}"
    if not s.done:
        return f"stream does not end with [DONE]: {s.events[-2:]}"
    events = s.events[:-1]
    if DONE in events:
        return "[DONE] before the end"
    if any(not isinstance(e, dict) or "error" in e for e in events):
        return f"unexpected event: {[e for e in events if not isinstance(e, dict) or 'error' in e]}"
    include_usage = bool((spec["body"].get("stream_options") or {}).get("include_usage"))
    content = events
    if include_usage:
        if not events or events[-1].get("choices") != []:
            return f"no usage chunk at the end: {events[-1:]}"
        usage = {"prompt_tokens": exp.prompt_tokens, "completion_tokens": exp.completion_tokens,
                 "total_tokens": exp.prompt_tokens + exp.completion_tokens}
        if events[-1].get("usage") != usage:
            return f"usage chunk {events[-1].get('usage')} != {usage}"
        content = events[:-1]
        if any("usage" not in e or e["usage"] is not None for e in content):
            return "chunks before the usage chunk must carry usage: null"
    want_object = "chat.completion.chunk" if chat else "text_completion"
    if not content:
        return "no content chunks"
    for e in content:
        if e.get("object") != want_object or e.get("model") != MODEL or len(e.get("choices", [])) != 1:
            return f"bad chunk {e}"
    if len({e.get("id") for e in content}) != 1:
        return "chunk ids differ"
    text = stream_text(content, 0, chat)
    if text != exp.text:
        return f"streamed text {text!r} != expected {exp.text!r}"
    finishes = [e["choices"][0].get("finish_reason") for e in content]
    if finishes[-1] != exp.finish_reason or any(f is not None for f in finishes[:-1]):
        return f"finish reasons {finishes}"
    if chat and (content[0]["choices"][0].get("delta") or {}).get("role") != "assistant":
        return f"first chat chunk lacks role assistant: {content[0]}"
    return None


def run_one(port: int, spec: dict) -> str | None:
    try:
        if spec["stream"]:
            err = verify_stream(spec, stream_sse_full(port, spec["path"], spec["body"], timeout=60))
        else:
            status, resp = post_json(port, spec["path"], spec["body"], timeout=60)
            err = verify_response(spec, status, resp)
    except Exception as e:  # noqa: BLE001 - reported as this request's failure
        err = f"{type(e).__name__}: {e}"
    return None if err is None else f"request {spec['i']} {spec['path']} {json.dumps(spec['body'])}: {err}"


def check_stop_strings(port: int) -> None:
    log("stop strings:")
    text = "stop strings are cut before they appear"
    messages = [{"role": "user", "content": text}]
    kinds = [
        ("a whole word", lambda p: [p[6]]),
        ("across two tokens", lambda p: p[4][-2:] + p[5][:3]),
        ("one of several", lambda p: ["zzz-never", p[9], "qqq"]),
    ]
    for chat in (False, True):
        prompt = chat_prompt(messages) if chat else text
        path = "/v1/chat/completions" if chat else "/v1/completions"
        pieces = synthetic_pieces(prompt, 5, 30)
        for what, make_stop in kinds:
            stop = make_stop(pieces)
            stops = stop if isinstance(stop, list) else [stop]
            exp = synthetic_completion(prompt, 5, 30, stops)
            check(exp.finish_reason == "stop" and len(exp.text) < len("".join(pieces)),
                  f"(self-check) stop {stop!r} occurs in the synthetic output")
            base = ({"messages": messages} if chat else {"prompt": text}) | {"seed": 5, "max_tokens": 30, "stop": stop}
            where = f"{path} stop {what}"
            status, resp = post_json(port, path, base)
            check_eq(status, 200, f"{where}: status")
            c = resp["choices"][0]
            check_eq(c["message"]["content"] if chat else c["text"], exp.text, f"{where}: text ends before the stop string")
            check_eq(c["finish_reason"], "stop", f"{where}: finish_reason")
            check_eq(resp["usage"]["completion_tokens"], exp.completion_tokens, f"{where}: completion_tokens")
            events = stream_sse(port, path, base | {"stream": True})
            check_eq(stream_text(events, 0, chat), exp.text, f"{where} (stream): streamed text")
            check_eq(stream_finish_reason(events), "stop", f"{where} (stream): finish_reason")
            check_eq(events[-1], DONE, f"{where} (stream): last event")
    pieces = synthetic_pieces(text, 5, 12)
    status, resp = post_json(port, "/v1/completions", {"prompt": text, "seed": 5, "max_tokens": 12, "stop": ["never-there"]})
    check(status == 200 and resp["choices"][0]["text"] == "".join(pieces)
          and resp["choices"][0]["finish_reason"] == "length", "a stop string that never occurs changes nothing")


def check_n_choices(port: int) -> None:
    log("n > 1:")
    prompt = "two answers please"
    status, resp = post_json(port, "/v1/completions", {"prompt": prompt, "n": 2, "seed": 11, "max_tokens": 8})
    check_eq(status, 200, "n=2 status")
    texts = {c["index"]: c["text"] for c in resp["choices"]}
    check_eq(texts, {0: synthetic_completion(prompt, 11, 8).text, 1: synthetic_completion(prompt, 12, 8).text},
             "n=2 choices use seeds 11 and 12")
    check_eq(resp["usage"], {"prompt_tokens": 3, "completion_tokens": 16, "total_tokens": 19}, "n=2 usage")

    msgs = [{"role": "user", "content": prompt}]
    events = stream_sse(port, "/v1/chat/completions", {"messages": msgs, "n": 3, "max_tokens": 5, "stream": True})
    cp = chat_prompt(msgs)
    for i in range(3):
        check_eq(stream_text(events, i, chat=True), synthetic_completion(cp, i, 5).text,
                 f"n=3 chat stream without seed: choice {i} uses seed {i}")
        check_eq(stream_finish_reason(events, i), "length", f"n=3 chat stream: choice {i} finish_reason")
    check_eq(events[-1], DONE, "n=3 chat stream ends with [DONE]")


def check_misc(port: int) -> None:
    log("token-id prompts, defaults, keep-alive:")
    status, resp = post_json(port, "/v1/completions", {"prompt": [101, 7, 2048], "max_tokens": 4})
    check(status == 200 and resp["choices"][0]["text"] == synthetic_completion("101 7 2048", 0, 4).text
          and resp["usage"]["prompt_tokens"] == 3, "a token-id prompt is the ids as decimal words")
    status, resp = post_json(port, "/v1/completions", {"prompt": "defaults"})
    check(status == 200 and resp["choices"][0]["text"] == synthetic_completion("defaults", 0, 16).text
          and resp["model"] == MODEL, "no model, seed or max_tokens: the served model, seed 0, 16 tokens")

    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        sockets = set()
        for k in range(3):
            conn.request("POST", "/v1/completions", body=json.dumps({"prompt": f"keep {k}", "max_tokens": 2}),
                         headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            body = json.loads(r.read())
            sockets.add(id(conn.sock))
            check(r.status == 200 and body["choices"][0]["text"] == synthetic_completion(f"keep {k}", 0, 2).text,
                  f"keep-alive request {k + 1} of 3 on one connection")
        check_eq(len(sockets), 1, "the three requests used one TCP connection")
    finally:
        conn.close()


def main() -> None:
    config = {"data_parallel": {"size": 2},
              "engine": {"model": MODEL, "step_time_ms": 2.0, "max_batch": 64}}
    with Daemon(config, env={"WATCHDOG_USEC": "300000"}, name="serve") as d:
        d.wait_ready(30)
        statuses = d.status_lines()
        check("2/2 ranks ready" in statuses, "STATUS=2/2 ranks ready was sent", statuses)
        msgs = d.notify_messages()
        check(msgs.count("READY=1") == 1 and msgs.index("READY=1") > msgs.index("STATUS=2/2 ranks ready"),
              "READY=1 sent once, after STATUS=2/2 ranks ready", msgs)
        ranks = d.ranks()
        check_eq(sorted(ranks), [0, 1], "rank processes (children of the daemon)")
        shared = {r: socket_inodes(p) & socket_inodes(d.pid) for r, p in ranks.items()}
        expect(not any(shared.values()),
               "rank processes hold none of the daemon's sockets (e.g. the HTTP listener: close-on-exec)", shared)

        status, health = get(d.port, "/health")
        check(status == 200 and health.get("ready_ranks") == 2 and health.get("status") == "ok",
              "/health: 200, status ok, ready_ranks 2", (status, health))
        status, models = get(d.port, "/v1/models")
        check(status == 200 and models.get("object") == "list" and [m.get("id") for m in models.get("data", [])] == [MODEL],
              f"/v1/models lists {MODEL}", (status, models))

        log(f"{REQUESTS} concurrent requests ({WORKERS} workers, half streaming, completions and chat):")
        specs = [make_spec(i) for i in range(REQUESTS)]
        cpu0 = {r: cpu_ns(p) for r, p in ranks.items()}
        sw0 = {r: voluntary_switches(p) for r, p in ranks.items()}
        start = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            errors = [e for e in pool.map(lambda s: run_one(d.port, s), specs) if e]
        elapsed = time.monotonic() - start
        check(not errors, f"all {REQUESTS} answers match the synthetic output, usage and finish_reason "
                          f"({elapsed:.1f} s)", "\n".join(errors[:10]) + (f"\n... {len(errors)} failures" if errors else ""))
        check_eq(sum(1 for s in specs if s["stream"]), REQUESTS // 2, "streaming requests")

        cpu = {r: cpu_ns(p) - cpu0[r] for r, p in ranks.items()}
        sw = {r: voluntary_switches(p) - sw0[r] for r, p in ranks.items()}
        log(f"  rank CPU time during the load: {({r: f'{v / 1e6:.1f} ms' for r, v in cpu.items()})}, "
            f"voluntary context switches: {sw}")
        total = sum(cpu.values())
        check(total > 0 and all(v >= 0.2 * total for v in cpu.values()),
              "both ranks did a fair share of the work (CPU time >= 20% each)", cpu)
        check(all(v >= 50 for v in sw.values()), "both ranks ran engine steps (>= 50 step sleeps each)", sw)
        check_eq(sorted(d.ranks().items()), sorted(ranks.items()), "the same rank processes still run")

        check_stop_strings(d.port)
        check_n_choices(d.port)
        check_misc(d.port)

        status, health = get(d.port, "/health")
        check(status == 200 and health.get("ready_ranks") == 2, "/health after the load: ready_ranks 2", health)
        check("WATCHDOG=1" in d.notify_messages(), "WATCHDOG=1 sent (WATCHDOG_USEC set)")

        code = d.stop()
        check_eq(code, 0, "exit status after SIGTERM")
        check("STOPPING=1" in d.notify_messages(), "STOPPING=1 sent")
        check(not d.tagged_processes(), "no process of the daemon remains")


if __name__ == "__main__":
    run_test(main, timeout=120)
