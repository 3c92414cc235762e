"""A reloaded key of the kind that reaches ranks as they start (engine.default_max_tokens,
carried in CONFIG): the log names it, the running rank keeps the value it started with, and
the rank's next process gets the new one (dpengined.toml(5), RELOADING)."""

import os
import signal

from harness import (Daemon, check, check_eq, check_in, merge, post_json, run_test, slow_factor, wait_until,
                     write_config)


def completion_tokens(port: int) -> int | None:
    """Tokens of a completion that sets no max_tokens, or None while no rank serves it."""
    status, body = post_json(port, "/v1/completions", {"prompt": "count"})
    return body["usage"]["completion_tokens"] if status == 200 else None


def main() -> None:
    with Daemon({"engine": {"default_max_tokens": 3}, "supervision": {"restart_backoff": 0.1}}) as d:
        d.wait_ready()
        check_eq(completion_tokens(d.port), 3, "tokens by the configured default")

        write_config(d.tmp, merge(d.config, {"engine": {"default_max_tokens": 5}}))
        os.kill(d.pid, signal.SIGHUP)
        check(d.wait_log(r"configuration reloaded", 10), "reloaded")
        check_in("changes to engine.default_max_tokens reach each rank when it next starts", d.log_text(),
                 "the log says when the key applies")
        check_eq(completion_tokens(d.port), 3, "the running rank keeps the default it started with")

        os.kill(d.ranks()[0], signal.SIGKILL)
        check(wait_until(lambda: completion_tokens(d.port) == 5, 20 * slow_factor(), 0.1),
              "the restarted rank applies the reloaded default")
        check_eq(d.stop(), 0, "clean exit")


if __name__ == "__main__":
    run_test(main, timeout=60)
