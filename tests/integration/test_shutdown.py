"""Acceptance 4: stopping the daemon.

(a) SIGTERM with requests in flight: STOPPING=1 is sent, new connections are refused, every
    in-flight request completes (drain, within daemon.stop_timeout), the daemon exits 0 in
    bounded time, no rank process remains and the runtime directory holds no socket files.
(a2) requests that outlast daemon.stop_timeout end with a clear error (503 / an SSE error event
    and [DONE]), never truncated without an error; the daemon still exits 0.
(a3) a second SIGTERM means "now": in-flight requests fail at once and the daemon exits.
(b) SIGKILL to the daemon: all its rank processes are gone within 2 s (PR_SET_PDEATHSIG), and
    a new daemon can start on the same runtime directory.
"""

import os
import signal
import socket
import time

import faults
from harness import (HOST, Daemon, check, check_eq, expect, get, log, pid_alive, post_json, run_test, slow_factor,
                     sockets_under, synthetic_completion, tail, wait_until)


class Call(faults.Call):
    """A request in flight while the daemon stops; started at once. Its clear error is any
    server error (502/503/504 with an OpenAI error body, or an SSE error event)."""

    def __init__(self, port: int, i: int, stream: bool, max_tokens: int, step: str = ""):
        super().__init__(i, stream, f"shutdown test {step} {i}", max_tokens)
        self.start(port)

    def clear_error(self, error: dict, status: int | None) -> bool:
        if status is None:
            return bool(error.get("message"))
        return status in (502, 503, 504) and bool(error.get("message")) and error.get("type") == "server_error"


def join_and_judge(calls: list) -> dict:
    faults.join_calls(calls)
    out = faults.outcomes(calls)
    faults.check_none_bad(out, "every request completed fully or ended with a clear error")
    return out


def new_connection_outcome(port: int, timeout: float = 1.0) -> str:
    """What a new client sees: "refused", "HTTP <status>", "closed" or "hang"."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(4096)
            return data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed"
    except ConnectionRefusedError:
        return "refused"
    except socket.timeout:
        return "hang"
    except OSError as e:
        return f"closed ({e})"


def part_a() -> None:
    log("(a) SIGTERM with requests in flight: drain")
    config = {"data_parallel": {"size": 2}, "engine": {"step_time_ms": 10.0}}
    with Daemon(config, name="drain") as d:
        d.wait_ready(30)
        ranks = d.ranks()
        check_eq(sorted(ranks), [0, 1], "rank processes")
        calls = [Call(d.port, i, i % 2 == 1, 50, "a") for i in range(20)]
        long_call = Call(d.port, 99, True, 300, "a")  # ~3 s: the drain has to wait for it
        calls.append(long_call)
        check(all(c.started.wait(10 * slow_factor()) for c in calls if c.stream), "the streams are running")
        check(all(c.ended is None for c in calls), "all requests are in flight")
        t_term = time.monotonic()
        os.kill(d.pid, signal.SIGTERM)
        check(d.notify.wait_for(lambda m: m == "STOPPING=1", 5 * slow_factor()), "STOPPING=1 was sent")
        time.sleep(0.2)
        check(long_call.ended is None and d.running(), "the daemon is draining (the long request still runs)")
        seen = new_connection_outcome(d.port, 1.0 * slow_factor())
        log(f"  a new connection while draining: {seen}")
        expect(seen == "refused" or seen.startswith("HTTP/1.1 503") or seen.startswith("closed"),
               "a new connection while draining is refused (or answered 503), it does not hang", seen)
        code = d.wait(30)
        t_exit = time.monotonic() - t_term
        check_eq(code, 0, f"exit status ({t_exit:.1f} s after SIGTERM)")
        check(t_exit < 15 * slow_factor(), "the daemon exited within the bound")
        result = join_and_judge(calls)
        check_eq(len(result["ok"]), len(calls), "every in-flight request completed (drained)")
        check(long_call.ended - t_term < t_exit + 0.5, "the long request finished before the daemon exited")
        gone = wait_until(lambda: not any(pid_alive(p) for p in d.known_rank_pids()), 2)
        check(gone, "no rank process remains", [p for p in d.known_rank_pids() if pid_alive(p)])
        check(not d.tagged_processes(), "no process started by the daemon remains", d.tagged_processes())
        socks = sockets_under(d.runtime_dir)
        check(not socks, "the runtime directory holds no socket files", (socks, os.listdir(d.runtime_dir)))
        check(not os.path.exists(os.path.join(d.runtime_dir, "rpc.sock")), "rpc.sock is gone")
        check("STOPPING=1" in d.notify_messages() and "READY=1" in d.notify_messages(), "READY=1 then STOPPING=1")
        check("stopped" in d.log_text(), "the log ends with 'stopped'", tail(d.log_text(), 500))


def part_a2() -> None:
    log("(a2) requests outlasting daemon.stop_timeout end with a clear error")
    config = {"data_parallel": {"size": 2}, "engine": {"step_time_ms": 10.0}, "daemon": {"stop_timeout": 1.0}}
    with Daemon(config, name="stop-timeout") as d:
        d.wait_ready(30)
        d.ranks()
        longs = [Call(d.port, i, i % 2 == 1, 1500, "a2") for i in range(4)]      # ~15 s
        shorts = [Call(d.port, 10 + i, i % 2 == 1, 60, "a2") for i in range(4)]  # ~0.6 s
        calls = longs + shorts
        check(all(c.started.wait(10 * slow_factor()) for c in calls if c.stream), "the streams are running")
        t_term = time.monotonic()
        os.kill(d.pid, signal.SIGTERM)
        code = d.wait(20)
        t_exit = time.monotonic() - t_term
        check_eq(code, 0, f"exit status ({t_exit:.1f} s after SIGTERM)")
        check(t_exit < 1.0 + 7 * slow_factor(), "exit soon after stop_timeout (1 s) plus the ranks' grace")
        result = join_and_judge(calls)
        completed = {c.i for c, _ in result["ok"]}
        failed = {c.i: detail for c, detail in result["error"]}
        check_eq(completed, {c.i for c in shorts}, "the short requests completed during the drain")
        check_eq(set(failed), {c.i for c in longs}, "the long requests ended with an error")
        log(f"  errors: {sorted(set(failed.values()))}")
        check(all("shutting down" in msg for msg in failed.values()), "the error says the server is shutting down")
        check(all(c.ended - t_term < 1.0 + 3 * slow_factor() for c in longs), "... promptly after stop_timeout")
        check(d.wait_log(r"still in flight after 1 s \(daemon.stop_timeout\)", 2),
              "the log says requests were still in flight after daemon.stop_timeout")
        check(not d.tagged_processes(), "no process started by the daemon remains")
        check(not sockets_under(d.runtime_dir), "the runtime directory holds no socket files")


def part_a3() -> None:
    log("(a3) a second SIGTERM stops at once")
    config = {"data_parallel": {"size": 1}, "engine": {"step_time_ms": 10.0}}
    with Daemon(config, name="twice") as d:
        d.wait_ready(30)
        d.ranks()
        calls = [Call(d.port, i, i % 2 == 1, 2000, "a3") for i in range(2)]  # ~20 s
        check(all(c.started.wait(10 * slow_factor()) for c in calls if c.stream), "the stream is running")
        time.sleep(0.2)
        t_term = time.monotonic()
        os.kill(d.pid, signal.SIGTERM)
        time.sleep(0.3)
        check(d.running(), "still draining after the first SIGTERM")
        os.kill(d.pid, signal.SIGTERM)
        code = d.wait(15)
        check_eq(code, 0, f"exit status ({time.monotonic() - t_term:.1f} s after the first SIGTERM)")
        result = join_and_judge(calls)
        check_eq(len(result["error"]), 2, "both requests ended with an error, not a truncation")
        check(not d.tagged_processes(), "no process started by the daemon remains")


def part_b() -> None:
    log("(b) SIGKILL to the daemon: its ranks go too")
    config = {"data_parallel": {"size": 4}, "engine": {"step_time_ms": 10.0}}
    with Daemon(config, name="sigkill") as d:
        d.wait_ready(30)
        ranks = d.ranks()
        check_eq(sorted(ranks), [0, 1, 2, 3], "rank processes")
        call = Call(d.port, 0, True, 2000, "b")
        check(call.started.wait(10 * slow_factor()), "a stream is running")
        t_kill = time.monotonic()
        d.kill()
        check(d.returncode == -signal.SIGKILL, "the daemon died of SIGKILL", d.returncode)
        gone = wait_until(lambda: not any(pid_alive(p) for p in ranks.values()), 2.0, 0.02)
        check(gone, f"all rank processes gone within 2 s ({time.monotonic() - t_kill:.2f} s)",
              [p for p in ranks.values() if pid_alive(p)])
        check(not d.tagged_processes(), "no process started by the daemon remains", d.tagged_processes())
        call.thread.join(10)
        check(not call.thread.is_alive() and call.ended - t_kill < 5,
              "the client's stream ended (connection closed), no hang")
        check(call.outcome()[0] != "ok", "... and was not mistaken for a complete answer")

        log("  restart on the same runtime directory (stale socket and lock left by the killed daemon)")
        again_cfg = {"data_parallel": {"size": 2}, "daemon": {"runtime_directory": d.runtime_dir}}
        with Daemon(again_cfg, name="restart") as d2:
            d2.wait_ready(30)
            status, r = post_json(d2.port, "/v1/completions", {"prompt": "again", "max_tokens": 3})
            check(status == 200 and r["choices"][0]["text"] == synthetic_completion("again", 0, 3).text,
                  "the restarted daemon serves")
            check_eq(get(d2.port, "/health")[1].get("ready_ranks"), 2, "restarted daemon: ready_ranks")
            check_eq(d2.stop(), 0, "restarted daemon: exit status")


def main() -> None:
    part_a()
    part_a2()
    part_a3()
    part_b()


if __name__ == "__main__":
    run_test(main, timeout=150)
