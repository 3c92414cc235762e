"""Start-up readiness under a service manager: the head's READY=1 (what ends systemd's start
job) waits for the ranks it runs itself and for data_parallel.min_ranks, never for other
nodes by default; STATUS= tells how many ranks are ready, here and elsewhere.

All on loopback (plaintext TCP, security.insecure), with the stand-in NOTIFY_SOCKET:
  1. DP=4, 2 local ranks, the headless node absent: READY=1 arrives while 2/4 ranks are
     ready, STATUS= says "2/4 ranks ready (2/2 on this node, 0/2 on other nodes)", the head
     serves; a headless node started later brings STATUS= to "4/4 ranks ready".
  2. The same with min_ranks = 3 (and ready_timeout 6 s): READY=1 only comes with the
     ready_timeout's below-min-ranks error, never before.
  3. DP=2, no local ranks (-dpl 0): READY=1 once the front-end listens, STATUS= "0/2 ranks
     ready (all on other nodes)".
"""

from harness import (Daemon, check, check_eq, check_in, check_log_clean, check_serves, free_port, log, run_test,
                     slow_factor)

ENGINE = {"model": "m", "step_time_ms": 2.0}


def head(dp: int, dpl: int, rpc_port: int, extra: dict | None = None) -> Daemon:
    config = {"node": {"name": "head"}, "engine": ENGINE, "security": {"insecure": True}}
    for section, values in (extra or {}).items():
        config.setdefault(section, {}).update(values)
    return Daemon(config, name=f"head-dpl{dpl}", args=["-dp", str(dp), "-dpl", str(dpl), "--data-parallel-address",
                                                      "127.0.0.1", "--data-parallel-rpc-port", str(rpc_port)])


def headless(dp: int, dpl: int, dpr: int, rpc_port: int) -> Daemon:
    return Daemon({"node": {"name": "node-b"}, "security": {"insecure": True}}, name="node-b",
                  args=["--headless", "-dp", str(dp), "-dpl", str(dpl), "-dpr", str(dpr), "--data-parallel-address",
                        "127.0.0.1", "--data-parallel-rpc-port", str(rpc_port)])


def local_ranks_only() -> None:
    log("DP=4, 2 local ranks, node B absent:")
    rpc_port = free_port()
    with head(4, 2, rpc_port) as h:
        h.wait_ready(30)
        statuses = h.status_lines()
        want = "2/4 ranks ready (2/2 on this node, 0/2 on other nodes)"
        check(want in statuses, f"STATUS={want} was sent", statuses)
        msgs = h.notify_messages()
        check_eq(msgs.count("READY=1"), 1, "READY=1 sent once")
        check(msgs.index("READY=1") > msgs.index(f"STATUS={want}"), "READY=1 came with the local ranks ready", msgs)
        check_eq(h.status_lines()[-1], want, "the last STATUS= while node B is away")
        check_in("2/4 rank(s) ready, 2 of them on this node", h.log_text(), "the head's log")
        check_serves(h, "node B absent")
        with headless(4, 2, 2, rpc_port) as b:
            b.wait_ready(30)
            got = h.notify.wait_for(lambda m: m == "STATUS=4/4 ranks ready (2/2 on this node, 2/2 on other nodes)",
                                    30 * slow_factor())
            check(got, "STATUS= follows node B's ranks to 4/4", h.status_lines()[-3:])
            check(h.wait_log(r"all 4 rank\(s\) ready", 10), "the head logs that every rank is ready")
            check_eq(h.notify_messages().count("READY=1"), 1, "still a single READY=1")
            check_eq(b.stop(), 0, "node B stops cleanly")
        check_eq(h.stop(), 0, "the head stops cleanly")
        check_log_clean(h)


def min_ranks_beyond_local() -> None:
    log("DP=4, 2 local ranks, min_ranks 3, ready_timeout 6 s, node B absent:")
    with head(4, 2, free_port(), {"data_parallel": {"min_ranks": 3}, "handshake": {"ready_timeout": 6.0}}) as h:
        h.wait_ready(40)
        # READY=1 is sent right after the deadline's log line: had it come earlier (with the
        # local ranks), the line would not be there yet.
        check_in("only 2 of 4 ranks are ready after 6 s", h.log_text(), "the log when READY=1 arrived")
        status = h.notify.wait_for(lambda m: "fewer than data_parallel.min_ranks (3); refusing requests" in m, 10)
        check(status and status.startswith("STATUS=2/4 ranks ready"), "STATUS= says the head refuses requests",
              h.status_lines()[-3:])
        check_eq(h.stop(), 0, "the head stops cleanly")
        check_log_clean(h)


def no_local_ranks() -> None:
    log("DP=2, no local ranks (-dpl 0):")
    with head(2, 0, free_port()) as h:
        h.wait_ready(30)
        want = "STATUS=0/2 ranks ready (all on other nodes)"
        check(want in h.notify_messages(), f"{want} was sent", h.notify_messages())
        r = h.notify_messages()
        check_eq(r.count("READY=1"), 1, "READY=1 once the front-end listens")
        check_eq(h.stop(), 0, "the head stops cleanly")
        check_log_clean(h)


def main() -> None:
    local_ranks_only()
    min_ranks_beyond_local()
    no_local_ranks()


if __name__ == "__main__":
    run_test(main, timeout=180)
