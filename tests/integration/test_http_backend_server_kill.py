"""The http backend when a rank's server dies: DP=2, each rank runs a second dpengined as its
server (20 ms per token). Two long streams run (one per rank); rank 1's server gets SIGKILL.

Checks: rank 1 reports the server's death with the reason code "backend-exited" and exits;
the daemon restarts it, and the new rank starts a new server; the stream that was on rank 1
ends (an error event naming the rank, then [DONE]) rather than hanging, the other completes
with the right text; the daemon is ready with both ranks again and completions succeed on
both servers, the new one included. Last, a rank killed with SIGKILL takes its server with it.
"""

import os
import shutil
import signal
import tempfile
import threading

from harness import (Daemon, check, check_eq, get, log, pid_alive, post_json, run_test, stream_errors,
                     stream_sse_full, stream_text, synthetic_completion, wait_until)
from httpbackend import backend_servers, dpengined_server_engine, metric, server_port

DP = 2
VICTIM = 1
STEP_MS = 20.0
LONG_TOKENS = 400  # 8 s per stream: still running when the server is killed


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="dpe-http-kill-")
    try:
        config = {"data_parallel": {"size": DP}, "engine": dpengined_server_engine(tmp, STEP_MS),
                  "supervision": {"restart_backoff": 0.5}}
        with Daemon(config, name="http-server-kill") as d:
            d.wait_ready(90)
            servers = backend_servers(d)
            check_eq(sorted(servers), list(range(DP)), "a server per rank")
            old_rank_pid = d.ranks()[VICTIM]
            victim = servers[VICTIM]

            streams = {}
            # A stream that has produced text is lost with its rank (one that has not would
            # move to another rank): kill only once both have.
            started = [threading.Event() for _ in range(DP)]

            def stream(i: int) -> None:
                body = {"prompt": f"long stream {i}", "seed": i, "max_tokens": LONG_TOKENS, "stream": True}
                streams[i] = stream_sse_full(d.port, "/v1/completions", body, timeout=60,
                                             on_event=lambda _ev: started[i].set())

            threads = [threading.Thread(target=stream, args=(i,)) for i in range(DP)]
            for t in threads:
                t.start()
            busy = wait_until(lambda: all(metric(server_port(p), "dpengine_rank_in_flight") == 1
                                          for p in servers.values()), 15)
            check(busy, "both servers are streaming")
            check(all(e.wait(15) for e in started), "both streams have produced text")

            os.kill(victim, signal.SIGKILL)
            log(f"  SIGKILL to rank {VICTIM}'s server (pid {victim})")
            check(d.wait_log(rf"backend server \(pid {victim}\) was killed by signal KILL.*\(backend-exited\)", 15),
                  "the rank reports its server's death with the reason code")
            check(d.wait_log(rf"restarting rank {VICTIM} in", 15), "the daemon restarts the rank")

            for t in threads:
                t.join(60)
            check(all(not t.is_alive() for t in threads), "no stream hangs")
            lost = [i for i, s in streams.items() if stream_errors(s.events)]
            check_eq(len(lost), 1, "streams ended with an error")
            s = streams[lost[0]]
            check(s.done and f"rank {VICTIM}" in stream_errors(s.events)[0].get("message", ""),
                  "the lost stream names the rank and ends with [DONE]", s.events[-3:])
            other = streams[1 - lost[0]]
            expected = synthetic_completion(f"long stream {1 - lost[0]}", seed=1 - lost[0], max_tokens=LONG_TOKENS)
            check(stream_text(other.events) == expected.text, "the other stream's text is complete and right",
                  stream_text(other.events))

            def restarted():
                new = backend_servers(d)
                rank_pid = d.ranks().get(VICTIM)
                ok = VICTIM in new and new[VICTIM] != victim and rank_pid not in (None, old_rank_pid)
                return new if ok else None

            new_servers = wait_until(restarted, 60)
            check(new_servers, "a new rank process runs a new server")
            check(not pid_alive(victim), "the killed server is gone")
            check(wait_until(lambda: get(d.port, "/health")[1].get("ready_ranks") == DP, 60),
                  "both ranks are ready again")
            for i in range(6):
                prompt = f"after the restart {i}"
                status, reply = post_json(d.port, "/v1/completions", {"prompt": prompt, "seed": i, "max_tokens": 8})
                check_eq(status, 200, f"completion {i} after the restart")
                check_eq(reply["choices"][0]["text"], synthetic_completion(prompt, seed=i, max_tokens=8).text,
                         f"text of completion {i}")
            served = metric(server_port(new_servers[VICTIM]), "dpengine_rank_requests_total")
            check(served and served > 0, f"the new server served requests ({served})")

            # A rank that dies without cleaning up: its server goes too (PR_SET_PDEATHSIG).
            rank0, server0 = d.ranks()[0], new_servers[0]
            os.kill(rank0, signal.SIGKILL)
            log(f"  SIGKILL to rank 0 (pid {rank0}), whose server is pid {server0}")
            check(wait_until(lambda: not pid_alive(server0), 20), "the server of a killed rank exits")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_test(main, timeout=240)
