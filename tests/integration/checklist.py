"""Named checks for the test scripts that examine what the build produced (man pages, the
unit, the default config, the packages) rather than run a deployment: each check prints
"ok:" or "FAILED:" and the script goes on, so one run lists every problem; verdict() ends it.

  - SRC, BUILD:  the source tree and the build directory ($DPENGINE_BUILD_DIR, else build/).
  - check():     one named check; returns whether it held.
  - run():       a program's output, bounded in time (and by a deadline, when one is set).
  - run_parts(): runs the script's parts in order (a crash in one does not hide the others)
                 and returns verdict(): the exit status, 0 when every check held.
  - default_config(), int_constants(): facts from the build and the source to check against.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from typing import Callable, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.path.abspath(os.environ.get("DPENGINE_BUILD_DIR", os.path.join(SRC, "build")))
DPENGINED = os.path.join(BUILD, "daemon", "dpengined")

failures: list[str] = []
_deadline: Optional[float] = None


def set_deadline(seconds: float) -> None:
    """run() refuses to start a program this many seconds from now (the CTest limit is 300)."""
    global _deadline
    _deadline = time.monotonic() + seconds


def check(cond: object, what: str, detail: object = None) -> bool:
    if cond:
        print(f"  ok: {what}", flush=True)
    else:
        print(f"FAILED: {what}" + (f"\n    detail: {detail}" if detail is not None else ""), flush=True)
        failures.append(what)
    return bool(cond)


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    if _deadline is not None:
        left = _deadline - time.monotonic()
        if left < 5:
            raise TimeoutError(f"out of time before {cmd[0]}")
        timeout = min(timeout, left)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def run_parts(parts: list[Callable], *args) -> int:
    for part in parts:
        try:
            part(*args)
        except Exception as e:  # a crash in one part should not hide the others
            check(False, f"{part.__name__} ran", repr(e))
    return verdict()


def verdict() -> int:
    """Prints PASS or how many checks failed; the script's exit status."""
    if failures:
        print(f"FAIL: {len(failures)} check(s) failed")
        return 1
    print("PASS")
    return 0


def default_config() -> dict[str, str]:
    """Every key `dpengined --config /dev/null --check-config` prints ("section.key") -> its
    default value as TOML ("" for a key that is unset by default)."""
    out = run([DPENGINED, "--config", "/dev/null", "--check-config"])
    values, section = {}, ""
    for line in out.stdout.splitlines():
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m[1]
        elif m := re.match(r"^(\w+) = (.*)$", line):
            values[f"{section}.{m[1]}"] = m[2]
        elif m := re.match(r"^# (\w+) is unset$", line):
            values[f"{section}.{m[1]}"] = ""
    return values


def int_constants(path: str) -> dict[str, int]:
    """The `constexpr int NAME = N;` constants of a source file (relative to SRC): NAME -> N."""
    return {m[1]: int(m[2]) for m in re.finditer(r"constexpr int (\w+) = (\d+);", read(os.path.join(SRC, path)))}


def cache_value(name: str) -> Optional[str]:
    """A value from BUILD/CMakeCache.txt, e.g. cache_value("CMAKE_INSTALL_PREFIX")."""
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt"), encoding="utf-8", errors="replace") as f:
            m = re.search(rf"^{name}:\w+=(.*)$", f.read(), re.M)
            return m[1].strip() if m else None
    except OSError:
        return None
