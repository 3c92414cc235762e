"""Shared pieces of the http backend's tests (engine.backend = "http").

The OpenAI-compatible server each rank starts is a second, real `dpengined` (single node,
synthetic backend) on the loopback port the rank picks, with its own runtime directory and no
D-Bus: its answers are the synthetic backend's documented deterministic text, so a test can
predict every token that comes back through the head.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from harness import Daemon, children_of, cmdline, dpengined_path, get


def dpengined_server_engine(tmp: str, step_time_ms: float = 0.0, start_delay: float = 0.0, **extra) -> dict:
    """An [engine] table whose ranks each run `dpengined` as their server; runtime
    directories go under `tmp` (one per rank). start_delay: the server only starts (execs
    dpengined) after this many seconds, as a real engine loading a model would."""
    command = [dpengined_path(), "--config", "/dev/null", "--host", "127.0.0.1", "--port", "{port}",
               "--runtime-directory", os.path.join(tmp, "server-rank{rank}"),
               "--step-time-ms", str(step_time_ms), "{model}"]
    if start_delay:
        command = ["/bin/sh", "-c", f'sleep {start_delay} && exec "$0" "$@"', *command]
    engine = {
        "backend": "http",
        "command": command,
        # No system bus: the server must not compete for org.dpengine1 with anything.
        "env": {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=" + os.path.join(tmp, "no-bus-here")},
        "ready_timeout": 60.0,
    }
    engine.update(extra)
    return engine


def backend_servers(d: Daemon, program: str = "dpengined") -> dict[int, int]:
    """{rank: pid} of the servers (children named `program`) of the daemon's live ranks."""
    out = {}
    for rank, pid in d.ranks().items():
        for child in children_of(pid):
            args = cmdline(child)
            if args and os.path.basename(args[0]) == program:
                out[rank] = child
    return out


def server_port(pid: int) -> int:
    args = cmdline(pid)
    return int(args[args.index("--port") + 1])


def metric(port: int, name: str, rank: int = 0) -> Optional[int]:
    """One per-rank value of a dpengined's /metrics (None when absent or unreachable)."""
    try:
        status, text = get(port, "/metrics", timeout=5)
    except OSError:
        return None
    if status != 200 or not isinstance(text, str):
        return None
    m = re.search(rf'^{name}{{rank="{rank}",[^}}]*}} (\d+)$', text, re.M)
    return int(m[1]) if m else None
