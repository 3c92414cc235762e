"""The http backend end to end: DP=2, each rank runs a real OpenAI-compatible server (a second
dpengined with the synthetic backend, 20 ms per token) and forwards its requests to it.

Checks: the ranks keep heartbeating while their servers start (3 s, three heartbeat timeouts)
and become ready once the servers are healthy; each rank starts one server in a process group
of its own, with CUDA_VISIBLE_DEVICES
set to its local rank, listening on the loopback port named in its command line, and its log
lines reach the daemon's log under the rank's name; completions through the head equal what
the synthetic backend produces (asked directly of a server, and computed by the oracle), with
finish reasons and usage; streams through the head arrive token by token (many SSE chunks)
and join to the same text; with 8 streams and engine.max_concurrency = 2 no server has more
than 2 requests at once and the head sees requests waiting in the ranks' queues; both
servers took requests. Then a client that goes away in the
middle of a long stream: the server sees its upstream request end (in-flight back to 0) long
before the request could have finished. Finally stopping the daemon leaves no server behind.
"""

import shutil
import signal
import tempfile
import threading

from harness import (Daemon, check, check_eq, check_in, environ_has, get, log, pid_alive, post_json, proc_stat,
                     run_test, stream_finish_reason, stream_sse, stream_sse_full, stream_text, synthetic_completion,
                     wait_until)
from httpbackend import backend_servers, dpengined_server_engine, metric, server_port

DP = 2
STEP_MS = 20.0
START_DELAY = 3.0  # seconds before each server starts listening
MAX_CONCURRENCY = 2
STREAMS = 8  # at once: 4 per rank, of which 2 wait in the rank's queue


def completion(port: int, prompt: str, seed: int, max_tokens: int, stop=None) -> dict:
    body = {"model": "synthetic", "prompt": prompt, "seed": seed, "max_tokens": max_tokens}
    if stop:
        body["stop"] = stop
    status, reply = post_json(port, "/v1/completions", body, timeout=60)
    check_eq(status, 200, f"HTTP status of {prompt!r}")
    return reply


class ClientGone(Exception):
    pass


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="dpe-http-")
    try:
        # The servers take several heartbeat timeouts to start: the ranks must keep sending
        # heartbeats meanwhile, or the head would count them lost before READY.
        config = {"data_parallel": {"size": DP},
                  "engine": dpengined_server_engine(tmp, STEP_MS, start_delay=START_DELAY,
                                                    max_concurrency=MAX_CONCURRENCY),
                  "handshake": {"heartbeat_interval": 0.2, "heartbeat_timeout": 1.0}}
        with Daemon(config, name="http-backend") as d:
            d.wait_ready(90)
            check("heartbeat-timeout" not in d.log_text(), "no rank went silent while its server started")
            check(d.wait_log(r"backend server \(pid \d+\) is healthy after [3-9]", 1),
                  "the server became healthy only after its start-up delay")
            servers = backend_servers(d)
            check_eq(sorted(servers), list(range(DP)), "a server per rank")
            ports = {rank: server_port(pid) for rank, pid in servers.items()}
            for rank, pid in servers.items():
                st = proc_stat(pid)
                check(st is not None and st.pgrp == pid, f"rank {rank}'s server leads its own process group")
                check(environ_has(pid, f"CUDA_VISIBLE_DEVICES={rank}"), f"rank {rank}'s server has its GPU")
                check(not environ_has(pid, f"NOTIFY_SOCKET={d.notify.path}"), "the server did not get NOTIFY_SOCKET")
                check_eq(get(ports[rank], "/health")[0], 200, f"rank {rank}'s server answers on its port")
            check(d.wait_log(r"\[rank 0 server\] .*info", 10), "the server's log lines reach the daemon's log")

            # Non-streaming: the head's answer, the server's own answer and the oracle agree.
            for i in range(4):
                prompt = f"forwarded prompt number {i}"
                expected = synthetic_completion(prompt, seed=i + 1, max_tokens=12)
                via_head = completion(d.port, prompt, i + 1, 12)
                direct = completion(ports[i % DP], prompt, i + 1, 12)
                choice = via_head["choices"][0]
                check_eq(choice["text"], expected.text, f"text of prompt {i} through the head")
                check_eq(direct["choices"][0]["text"], expected.text, f"text of prompt {i} from a server directly")
                check_eq(choice["finish_reason"], "length", "finish reason")
                check_eq(via_head["usage"]["completion_tokens"], 12, "completion tokens")
                check_eq(via_head["usage"]["prompt_tokens"], expected.prompt_tokens, "prompt tokens")

            third_word = synthetic_completion("stop me somewhere", seed=5, max_tokens=40).text.split()[2]
            expected = synthetic_completion("stop me somewhere", seed=5, max_tokens=40, stop=[" " + third_word])
            reply = completion(d.port, "stop me somewhere", 5, 40, stop=[" " + third_word])
            check_eq(reply["choices"][0]["text"], expected.text, "text cut at the stop string")
            check_eq(reply["choices"][0]["finish_reason"], "stop", "finish reason with a stop string")

            # Streaming, more at once than the ranks forward: token by token, same text, and
            # never more than max_concurrency requests on a server while the rest wait.
            results = {}
            most_in_flight = {r: 0 for r in range(DP)}
            most_waiting = 0

            def stream(i: int) -> None:
                body = {"model": "synthetic", "prompt": f"streamed prompt {i}", "seed": 100 + i, "max_tokens": 25,
                        "stream": True, "stream_options": {"include_usage": True}}
                results[i] = stream_sse(d.port, "/v1/completions", body, timeout=60)

            threads = [threading.Thread(target=stream, args=(i,)) for i in range(STREAMS)]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for r in range(DP):
                    most_in_flight[r] = max(most_in_flight[r], metric(ports[r], "dpengine_rank_in_flight") or 0)
                    most_waiting = max(most_waiting, metric(d.port, "dpengine_rank_queue_depth", r) or 0)
                threads[0].join(0.02)
            for t in threads:
                t.join(90)
            check(all(0 < n <= MAX_CONCURRENCY for n in most_in_flight.values()),
                  f"each server had at most {MAX_CONCURRENCY} requests at once", most_in_flight)
            check(most_waiting > 0, "the others waited in a rank's queue (queue depth reported to the head)",
                  most_waiting)
            for i in range(STREAMS):
                events = results.get(i)
                check(events is not None, f"stream {i} ended")
                expected = synthetic_completion(f"streamed prompt {i}", seed=100 + i, max_tokens=25)
                text_chunks = [e for e in events if isinstance(e, dict) and e.get("choices") and e["choices"][0]["text"]]
                check(len(text_chunks) > 5, f"stream {i} came in many chunks ({len(text_chunks)})")
                check_eq(stream_text(events), expected.text, f"streamed text {i}")
                check_eq(stream_finish_reason(events), "length", f"stream {i} finish reason")
                usage = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
                check(usage and usage[-1]["completion_tokens"] == 25, f"stream {i} usage", usage)
            for rank in range(DP):
                served = metric(ports[rank], "dpengine_rank_requests_total")
                check(served and served > 0, f"rank {rank}'s server served requests ({served})")

            # A client that goes away mid-stream: the upstream request ends in the server.
            long_tokens = 3000  # 60 s at 20 ms per token: far beyond the waits below
            seen = []

            def on_event(ev) -> None:
                seen.append(ev)
                if len(seen) == 3:
                    raise ClientGone()

            body = {"model": "synthetic", "prompt": "a very long story", "max_tokens": long_tokens, "stream": True}
            busy = {}

            def watch_busy() -> None:
                for rank in range(DP):
                    if metric(ports[rank], "dpengine_rank_in_flight"):
                        busy[rank] = True

            try:
                stream_sse_full(d.port, "/v1/completions", body, timeout=60,
                                on_event=lambda ev: (watch_busy(), on_event(ev)))
                check(False, "the long stream was cut by the client")
            except ClientGone:
                log("  client closed the connection after 3 events")
            check(len(busy) == 1, f"one server had the long request in flight while it streamed ({busy})")
            idle = wait_until(lambda: all(metric(ports[r], "dpengine_rank_in_flight") == 0 for r in range(DP)), 20)
            check(idle, "the server's request ended after the client went away (in-flight back to 0)")
            check(wait_until(lambda: metric(d.port, "dpengine_rank_in_flight", 0) == 0 and
                             metric(d.port, "dpengine_rank_in_flight", 1) == 0, 10),
                  "the head has nothing in flight either")
            check(d.running() and len(backend_servers(d)) == DP, "ranks and servers still run")

            status = d.stop(signal.SIGTERM, 60)
            check_eq(status, 0, "exit status after SIGTERM")
            gone = wait_until(lambda: not any(pid_alive(p) for p in servers.values()), 15)
            check(gone, "no server outlived the daemon", [p for p in servers.values() if pid_alive(p)])
            check_in("stopped", d.log_text(), "daemon log")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_test(main, timeout=240)
