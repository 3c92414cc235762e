"""dpengine in front of a real engine: DP=1, engine.backend = "http", the rank running
llama-cpp-python's server (llamaserver.py) on a tiny model the test writes. Each request of a
matrix goes to the head and, alternately, straight to the rank's own server; the answers must
be the same apart from "id" and "created":

  - by plain HTTP: the same status and Content-Type, and the same body byte for byte (a
    stream: the same events, each byte for byte);
  - by the openai SDK, where it can express the request: the same parsed answer (a stream:
    the same chunks, finish reasons and usage).

The matrix: completions, and streamed with stream_options.include_usage (which the engine
ignores: no usage chunk either way); chat, and streamed (the engine applies the model's ChatML
template: the prompt_tokens differ from what a "role: content" rendering gives); a token-id
prompt and a list of two prompts (the engine answers 500: its status and body must come back
unchanged, not garbled); logprobs, and chat logprobs with top_logprobs; presence_penalty;
response_format json_object; a seed with no temperature or top_p; seed 0; chat with no
max_tokens (until the context is full); top_k and min_p (engine-specific); a prompt longer than
the context (400 context_length_exceeded; streamed: 200 and an empty stream); requests the
engine rejects (top_p 2, streamed or not: 500 with its validation message). Unknown fields
reach the engine: x_vendor_field is accepted, and max_tokens "abc" and top_k "abc" get the
engine's own 500, which names the field.

Then engine.served_model_name: a second daemon serving "public-name" whose engine knows the
model as "tiny": a request for "public-name" gets the engine's answer, naming "tiny" (the name
it saw) exactly as when asked directly for "tiny"; a request naming "tiny" gets dpengine's own
404 model_not_found.

Also: the rank finished every routed request (dpengine_rank_requests_total), and 40 streams by
the SDK, which closes the connection as soon as it has read "data: [DONE]" (a moment before
the engine's response, and so the rank's last piece, ends), count as finished and timed, not
as aborted by their client.
"""

import os
import shutil
import tempfile

import llamaserver

llamaserver.require_venv()  # re-executes in build-venv's Python, which has the openai SDK

from harness import (Daemon, check, check_eq, check_log_clean, log, metric_samples, per_rank_metric,  # noqa: E402
                     run_test, slow_factor, wait_until)
from httpbackend import backend_servers, server_port  # noqa: E402
from realengine import (CHAT, COMPLETIONS, MESSAGES, M, Comparer, Endpoint, case_checks, engine_config,  # noqa: E402
                        matrix, normalise_bytes)


def stream_durations(port: int) -> float:
    """How many streamed chat requests dpengine_request_duration_seconds has timed."""
    return sum(v for labels, v in metric_samples(port, "dpengine_request_duration_seconds")
               if labels.get("le") == "+Inf" and labels.get("stream") == "true"
               and labels.get("endpoint") == "chat_completions")


def finished_by_rank0(port: int, expected: float) -> float:
    """Rank 0's dpengine_rank_requests_total once it reached `expected` (a stream the SDK
    closed at [DONE] counts when the engine's response ends, a moment later), or after 5 s."""
    value = lambda: per_rank_metric(port, "dpengine_rank_requests").get(0, 0)  # noqa: E731
    wait_until(lambda: value() >= expected, 5 * slow_factor(), 0.02)
    return value()


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="dpe-real-")
    try:
        model = llamaserver.write_model(os.path.join(tmp, "tiny.gguf"))
        mapped_engine = engine_config(model, model="public-name", served_model_name=M)
        # Both daemons start together (their servers load at the same time).
        passthrough = ["/extras/tokenize", "/extras/detokenize"]
        with Daemon({"engine": engine_config(model, passthrough_paths=passthrough)}, name="real-engine") as d, \
                Daemon({"engine": mapped_engine}, name="real-engine-mapped") as d2:
            d.wait_ready(90)
            d2.wait_ready(90)
            python = os.path.basename(llamaserver.venv_python())
            servers = backend_servers(d, python)
            check_eq(sorted(servers), [0], "rank 0 runs llama-cpp-python's server")
            direct = Endpoint("direct", server_port(servers[0]))
            routed = Endpoint("head", d.port)
            log(f"  the rank's server: pid {servers[0]}, port {direct.port}")
            cmp = Comparer(routed, direct)
            routed_requests = 0
            for case in matrix():
                r, dr, rs, ds = cmp.run(case)
                routed_requests += 1 + (rs is not None)
                case_checks(case, r, dr, direct)
            served = finished_by_rank0(d.port, routed_requests)
            check_eq(served, routed_requests, "requests rank 0 finished (dpengine_rank_requests_total)")

            # The SDK closes a stream's connection as soon as it has read "data: [DONE]", while the
            # engine's response (and so the rank's last piece) ends a moment later: such a stream
            # was answered in full, and must count as served, not as aborted by its client.
            log("- streams the SDK closes at [DONE]")
            streams = 40  # the race it guards against is lost by 5-35 % of streams
            body = {"model": M, "messages": MESSAGES, "max_tokens": 8, "temperature": 0, "stream": True}
            durations = stream_durations(d.port)
            answers = [routed.sdk("chat", body) for _ in range(streams)]
            bad = [a for a in answers if a[0] != "stream" or a[1][-1]["choices"][0]["finish_reason"] != "length"]
            check(not bad, f"{streams} SDK streams through the head, each to its finish reason", bad[:2])
            check_eq(finished_by_rank0(d.port, served + streams) - served, streams,
                     f"of {streams} SDK streams, finished by rank 0 (not aborted)")
            check_eq(stream_durations(d.port) - durations, streams,
                     "... and each timed in dpengine_request_duration_seconds")

            log("- /v1/embeddings and engine.passthrough_paths: the engine's answers, byte for byte")
            for path, body in (("/v1/embeddings", {"model": M, "input": "hello"}),  # this server: 500, no embedding model
                               ("/extras/tokenize", {"model": M, "input": "Hello router"}),
                               ("/extras/detokenize", {"model": M, "tokens": [72, 101, 377]})):
                via_head, own = routed.raw(path, body), direct.raw(path, body)
                check(via_head.status == own.status and via_head.content_type == own.content_type
                      and via_head.body == own.body, f"POST {path}: status {own.status}, content type and body relayed",
                      f"head: {via_head.status} {via_head.body!r}\ndirect: {own.status} {own.body!r}")
            unlisted = routed.raw("/extras/tokenize/count", {"model": M, "input": "x"})
            check_eq(unlisted.status, 404, "a path not in engine.passthrough_paths: dpengine's own 404")
            check_eq(unlisted.json()["error"].get("code"), "not-found", "... with its reason code")

            log("- engine.served_model_name: 'public-name' served as 'tiny'")
            servers2 = backend_servers(d2, python)
            check_eq(sorted(servers2), [0], "the mapped daemon's rank runs its server")
            direct2 = Endpoint("direct-mapped", server_port(servers2[0]))
            routed2 = Endpoint("head-mapped", d2.port)
            for path, body in ((COMPLETIONS, {"prompt": "The router", "max_tokens": 12, "temperature": 0}),
                               (CHAT, {"messages": MESSAGES, "max_tokens": 10, "temperature": 0})):
                via_head = routed2.raw(path, body | {"model": "public-name"})
                own = direct2.raw(path, body | {"model": M})
                check_eq(via_head.status, 200, f"{path} for 'public-name': status")
                check_eq(via_head.json()["model"], M, f"{path}: the engine's answer names the model it was asked for")
                check(own.status == 200 and normalise_bytes(via_head.body) == normalise_bytes(own.body),
                      f"{path} for 'public-name': the engine's answer, byte for byte as asked directly for {M!r}",
                      f"head: {via_head.body!r}\ndirect: {own.body!r}")
                sdk_answer = routed2.sdk("completions" if path == COMPLETIONS else "chat", body | {"model": "public-name"})
                check(sdk_answer[0] == "ok" and sdk_answer[1]["model"] == M, f"{path} by the SDK: answered by the engine",
                      sdk_answer)
            other = routed2.raw(COMPLETIONS, {"model": M, "prompt": "x", "max_tokens": 2})
            check_eq(other.status, 404, "a request naming the engine's own name: 404")
            check_eq(other.json()["error"].get("code"), "model_not_found", "... dpengine's own model_not_found")
            sdk_other = routed2.sdk("completions", {"model": "another-model", "prompt": "x", "max_tokens": 2})
            check(sdk_other[0] == "error" and sdk_other[1] == 404 and "model_not_found" in str(sdk_other[2]),
                  "the SDK naming another model: 404 model_not_found", sdk_other)

            check(d.running() and d2.running(), "both daemons still run")
            check_log_clean(d)
            check_log_clean(d2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_test(main, timeout=120)
