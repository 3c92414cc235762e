"""Configuration reload (SIGHUP, as `systemctl reload` sends): a changed limit applies without a
restart, a key that cannot change live is named in the log, and a broken file is refused with
its error while the daemon keeps serving with the running configuration."""

import os
import signal

from harness import (Daemon, check, check_eq, check_in, merge, post_json, run_test, wait_until,
                     write_config)


def body_of(size: int) -> dict:
    return {"prompt": "x" * size, "max_tokens": 2}


def main() -> None:
    with Daemon({"frontend": {"max_body_bytes": 4096}}) as d:
        d.wait_ready()
        check_eq(post_json(d.port, "/v1/completions", body_of(8000))[0], 413, "8 KB body over the 4 KiB limit")

        # A live key and a restart-only key change together.
        write_config(d.tmp, merge(d.config, {"frontend": {"max_body_bytes": 65536}, "engine": {"max_batch": 7}}))
        os.kill(d.pid, signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in d.log_text(), 10)
        check_in("engine.max_batch", d.log_text(), "the restart-only key is named")
        check_eq(post_json(d.port, "/v1/completions", body_of(8000))[0], 200, "the new limit applies without a restart")

        # A broken file is refused; the running configuration stays.
        with open(d.config_path, "w") as f:
            f.write("[frontend]\nmax_body_bytes = \"lots\"\n")
        os.kill(d.pid, signal.SIGHUP)
        wait_until(lambda: "reload refused" in d.log_text(), 10)
        check_in("frontend.max_body_bytes", d.log_text(), "the refusal names the key")
        check(d.running(), "the daemon still runs")
        check_eq(post_json(d.port, "/v1/completions", body_of(8000))[0], 200, "still serving with the last good limit")
        check_eq(d.stop(), 0, "clean exit")


if __name__ == "__main__":
    run_test(main, timeout=60)
