"""The README's demo (scripts/demo) runs to the end and says so with its exit status.

scripts/demo on this build (DPENGINE_BUILD_DIR: no dependencies installed, no build), on a free
port, away from any system bus. Checks: exit status 0; it printed the completion, the streamed
chat completion and "dpengined stopped cleanly"; afterwards the port is closed and the demo's
temporary directory (the daemon's runtime directory) is gone.
"""

import os
import re
import socket
import tempfile

from busharness import SOURCE_DIR, run
from harness import HOST, build_dir, check, check_eq, check_in, free_port, log, run_test


def main() -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="dpe-demo-") as tmp:
        env = {"DPENGINE_BUILD_DIR": build_dir(), "DPENGINE_DEMO_PORT": str(port),
               "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={os.path.join(tmp, 'no-bus')}"}
        r = run([os.path.join(SOURCE_DIR, "scripts", "demo")], env=env, timeout=120)
    log(f"  scripts/demo -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    check_eq(r.returncode, 0, "scripts/demo exits 0")
    check_in('"object":"text_completion"', r.stdout, "the demo printed the completion")
    check_in("data: [DONE]", r.stdout, "the demo printed the streamed chat completion")
    check_in("== dpengined stopped cleanly", r.stdout, "the demo stopped the daemon")
    with socket.socket() as s:
        s.settimeout(5)
        check(s.connect_ex((HOST, port)) != 0, f"nothing listens on port {port} any more")
    workdir = re.search(r"ranks connect to ipc://(\S+)/run/rpc\.sock", r.stderr)
    check(workdir is not None, "the daemon's log names its runtime directory", r.stderr)
    if workdir:
        check(not os.path.exists(workdir[1]), f"the demo removed its temporary directory {workdir[1]}")


if __name__ == "__main__":
    run_test(main, timeout=150)
