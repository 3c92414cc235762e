"""Shared pieces for dpengine's integration tests (stdlib only).

The tests run the real programs: `dpengined` from the build directory (DPENGINE_BUILD_DIR, as
CTest sets it; else ../../build next to this file), which spawns its `dpengine-rank` processes.

What is here:
  - configs:   to_toml(dict) and write_config(); free_port()
  - processes: Daemon (a context manager around one dpengined: temp config, runtime directory,
               NOTIFY_SOCKET listener, captured log, rank pids, stop/kill, cleanup of every
               process it started, found by an environment tag), run_dpengined() for short runs
               such as --check-config, and /proc helpers (rank_processes(), cpu_ns(), ...)
  - HTTP:      request(), post_json(), get(), stream_sse() and raw_exchange() over real TCP
  - oracle:    synthetic_completion() / synthetic_text(): the synthetic backend's documented
               deterministic output (daemon/engine/synthetic.hpp), including stop strings and
               the chat prompt rendering of daemon/engine/openai.cpp
  - running:   run_test(main, timeout) bounds a test's time, prints PASS/FAIL and sets the
               exit code; check()/check_eq() print what they verify.

Every process a test starts is killed in `finally`/`__exit__` paths, by process group, and a
backstop timer kills everything (and exits non-zero) if a test overruns its bound.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

HOST = "127.0.0.1"

# ---------------------------------------------------------------------------------------------
# Locations


def build_dir() -> str:
    d = os.environ.get("DPENGINE_BUILD_DIR")
    if d:
        return os.path.abspath(d)
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(os.path.join(here, "..", "..", "build"))


def dpengined_path() -> str:
    return os.path.join(build_dir(), "daemon", "dpengined")


def rank_program_path() -> str:
    return os.path.join(build_dir(), "daemon", "dpengine-rank")


def is_sanitized_build() -> bool:
    """True for an ASan/UBSan or TSan build (slower: tests may scale their loads and time bounds)."""
    try:
        with open(os.path.join(build_dir(), "CMakeCache.txt"), encoding="utf-8", errors="replace") as f:
            return re.search(r"^DPENGINE_(SANITIZE|TSAN):\w+=(ON|1|TRUE|YES)\s*$", f.read(), re.M | re.I) is not None
    except OSError:
        return False


def slow_factor() -> float:
    """How much longer than in a plain build things may take (for time bounds, not loads)."""
    return 3.0 if is_sanitized_build() else 1.0


# ---------------------------------------------------------------------------------------------
# Checks and output


class TestFailure(AssertionError):
    pass


def log(msg: str) -> None:
    print(msg, flush=True)


def check(cond: Any, what: str, detail: Any = None) -> None:
    """Asserts `cond`, printing `what` either way (with `detail` on failure)."""
    if cond:
        log(f"  ok: {what}")
        return
    msg = f"FAILED: {what}"
    if detail is not None:
        msg += f"\n    detail: {detail}"
    raise TestFailure(msg)


_soft_failures: list[str] = []


def expect(cond: Any, what: str, detail: Any = None) -> bool:
    """Like check(), but a failure is recorded and the test goes on (it still fails at the
    end): for checks after which the rest of the test is still meaningful."""
    if cond:
        log(f"  ok: {what}")
        return True
    msg = f"FAILED (continuing): {what}"
    if detail is not None:
        msg += f"\n    detail: {detail}"
    log(msg)
    _soft_failures.append(msg)
    return False


def check_eq(actual: Any, expected: Any, what: str) -> None:
    check(actual == expected, f"{what} == {expected!r}", f"got {actual!r}")


def check_in(needle: str, haystack: str, what: str) -> None:
    check(needle in haystack, f"{what} contains {needle!r}", f"text was:\n{tail(haystack, 3000)}")


def file_text(path: str) -> str:
    """A log file's text so far ("" while it does not exist), undecodable bytes replaced."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail(text: str, n: int = 4000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Polls `pred` until it returns something truthy (returned) or `timeout` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# TOML


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if v in (float("inf"), float("-inf")):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def to_toml(config: dict) -> str:
    """{section: {key: value}} → TOML text. Top-level non-dict values become bare keys (before
    any section); nested dicts become [section.sub] tables."""
    lines: list[str] = []
    for k, v in config.items():
        if not isinstance(v, dict):
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")

    def table(prefix: str, d: dict) -> None:
        lines.append("")
        lines.append(f"[{prefix}]")
        subs = []
        for k, v in d.items():
            if isinstance(v, dict):
                subs.append((k, v))
            else:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in subs:
            table(f"{prefix}.{_toml_key(k)}", v)

    for k, v in config.items():
        if isinstance(v, dict):
            table(_toml_key(k), v)
    return "\n".join(lines).lstrip("\n") + "\n"


def merge(base: dict, override: Optional[dict]) -> dict:
    """Deep merge of config dicts (override wins); neither argument is modified."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def write_config(directory: str, config: dict | str, name: str = "dpengined.toml") -> str:
    """Writes a config (dict → TOML, or TOML text as is) and returns its path."""
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(config if isinstance(config, str) else to_toml(config))
    return path


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# /proc helpers


@dataclass
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    utime: int
    stime: int


def proc_stat(pid: int) -> Optional[ProcStat]:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lp, rp = text.find("("), text.rfind(")")
    rest = text[rp + 2:].split()
    return ProcStat(pid, text[lp + 1:rp], rest[0], int(rest[1]), int(rest[2]), int(rest[11]), int(rest[12]))


def pid_alive(pid: int) -> bool:
    """Running (a zombie counts as gone: it only waits to be reaped)."""
    st = proc_stat(pid)
    return st is not None and st.state not in ("Z", "X")


def all_pids() -> list[int]:
    return [int(n) for n in os.listdir("/proc") if n.isdigit()]


def children_of(pid: int) -> list[int]:
    out = []
    for p in all_pids():
        st = proc_stat(p)
        if st and st.ppid == pid and st.state not in ("Z", "X"):
            out.append(p)
    return sorted(out)


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def environ_has(pid: int, entry: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return entry.encode() in f.read().split(b"\0")
    except OSError:
        return False


def processes_tagged(entry: str) -> list[int]:
    """Live processes whose environment holds `entry` ("NAME=VALUE"): everything a Daemon
    started, including rank processes that outlived it."""
    me = os.getpid()
    return [p for p in all_pids() if p != me and pid_alive(p) and environ_has(p, entry)]


def rank_of_pid(pid: int) -> Optional[int]:
    args = cmdline(pid)
    for i, a in enumerate(args[:-1]):
        if a == "--rank":
            try:
                return int(args[i + 1])
            except ValueError:
                return None
    return None


def cpu_ns(pid: int) -> int:
    """CPU time of all the process's threads in ns (schedstat; falls back to clock ticks)."""
    total, found = 0, False
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    found = True
            except (OSError, ValueError, IndexError):
                pass
    except OSError:
        pass
    if found:
        return total
    st = proc_stat(pid)
    return 0 if st is None else (st.utime + st.stime) * (1_000_000_000 // os.sysconf("SC_CLK_TCK"))


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches of all threads: a synthetic rank with a step time sleeps once
    per step, so this grows fast while it works and barely at all while it idles."""
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                pass
    except OSError:
        pass
    return total


def _status_bytes(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def memory_check_env() -> dict:
    """Environment for a daemon whose memory a test bounds: in sanitizer builds, ASan keeps freed
    memory in a quarantine (256 MiB by default) that would count as the daemon's; a small one."""
    if not is_sanitized_build():
        return {}
    return {"ASAN_OPTIONS": ":".join(filter(None, [os.environ.get("ASAN_OPTIONS"), "quarantine_size_mb=16"]))}


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` (VmRSS in /proc/PID/status)."""
    return _status_bytes(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    """The most resident memory `pid` had so far (VmHWM in /proc/PID/status)."""
    return _status_bytes(pid, "VmHWM")


def fd_count(pid: int) -> int:
    """Open file descriptors of `pid` (/proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Footprint:
    """A process's resident memory and open file descriptors at one moment, to check later
    that hostile input left nothing behind: check_returned() waits (bounded) for the fds to
    come back within `fd_slack` of this baseline, then checks both. The memory slack covers
    what the allocator keeps for reuse, not growth with the number of attempts."""

    def __init__(self, pid: int):
        self.pid = pid
        self.rss = rss_bytes(pid)
        self.fds = fd_count(pid)

    def __repr__(self) -> str:
        return f"{self.rss >> 20} MiB resident, {self.fds} fds"

    def check_returned(self, what: str, rss_slack: int = 48 << 20, fd_slack: int = 4, timeout: float = 30.0) -> None:
        wait_until(lambda: fd_count(self.pid) <= self.fds + fd_slack, timeout * slow_factor(), 0.2)
        now = Footprint(self.pid)
        log(f"  footprint {what}: {now} (baseline {self})")
        check(now.fds <= self.fds + fd_slack, f"{what}: open fds back to the baseline {self.fds} (+{fd_slack})", now.fds)
        check(now.rss <= self.rss + rss_slack,
              f"{what}: resident memory within {rss_slack >> 20} MiB of the baseline {self.rss >> 20} MiB", now)


def wait_closed_by_peer(socks: list, timeout: float) -> int:
    """Reads each socket, discarding what arrives, until the other end closes it or `timeout`
    passes; closes them all and returns how many the other end had not closed. Uses poll(2),
    so thousands of sockets are fine."""
    import select
    open_socks = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in open_socks:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while open_socks and time.monotonic() < deadline:
        for fd, _ in poller.poll(200):
            try:
                data = open_socks[fd].recv(65536)
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                open_socks.pop(fd).close()
    for s in socks:
        s.close()
    return len(open_socks)


def raise_fd_limit(wanted: int) -> None:
    """Raises this process's soft RLIMIT_NOFILE (and so its children's) to `wanted`, within the
    hard limit, for tests that hold thousands of connections."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def kill_pid_and_group(pid: int, sig: int = signal.SIGKILL, group_only: bool = False) -> None:
    """Signals the process group `pid` leads and the process itself. group_only: the process
    was already reaped (its pid may be reused), so only what is left of its group."""
    targets = ((os.killpg, pid),) if group_only else ((os.killpg, pid), (os.kill, pid))
    for fn, target in targets:
        try:
            fn(target, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_process_group(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Sends `sig` to a process and its group; SIGKILL if it has not exited after `grace` s."""
    kill_pid_and_group(proc.pid, sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        kill_pid_and_group(proc.pid)
        proc.wait(grace)


def communicate_within(proc: subprocess.Popen, timeout: float, what: str,
                       input_bytes: Optional[bytes] = None) -> tuple[bytes, bytes]:
    """proc.communicate() bounded by `timeout` (times slow_factor()); past it the process and
    its group are killed and the test fails with `what` and the end of its stderr."""
    try:
        return proc.communicate(input_bytes, timeout=timeout * slow_factor())
    except subprocess.TimeoutExpired:
        kill_pid_and_group(proc.pid)
        _, err = proc.communicate()
        raise TestFailure(f"{what} did not exit within {timeout * slow_factor():.0f} s; stderr:\n"
                          f"{tail(err.decode('utf-8', 'replace'))}")


def socket_inodes(pid: int) -> set[str]:
    """The sockets a process has open, as "socket:[inode]" (shared ones are the same socket)."""
    out = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:"):
                out.add(target)
    except OSError:
        pass
    return out


def sockets_under(directory: str) -> list[str]:
    found = []
    for root, _dirs, files in os.walk(directory):
        for name in files:
            p = os.path.join(root, name)
            try:
                if stat.S_ISSOCK(os.lstat(p).st_mode):
                    found.append(p)
            except OSError:
                pass
    return found


# ---------------------------------------------------------------------------------------------
# sd_notify listener


class NotifyListener:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET; a background thread
    collects every datagram, split into its KEY=VALUE lines."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self._lock = threading.Condition()
        self._messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="notify-listener", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            now = time.monotonic()
            with self._lock:
                for line in data.decode("utf-8", "replace").split("\n"):
                    if line:
                        self._messages.append((now, line))
                self._lock.notify_all()

    def messages(self) -> list[str]:
        with self._lock:
            return [m for _, m in self._messages]

    def timed_messages(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, pred: Callable[[str], bool], timeout: float,
                 give_up: Optional[Callable[[], bool]] = None) -> Optional[str]:
        """The first message (past or future) matching `pred`, or None after `timeout` or once
        `give_up()` is true."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for _, m in self._messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (give_up is not None and give_up()):
                    return None
                self._lock.wait(min(left, 0.1))

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# Processes

_live_daemons: set["Daemon"] = set()
_live_procs: set[subprocess.Popen] = set()
_registry_lock = threading.Lock()


def kill_everything() -> None:
    """Kills every process this test started (used by cleanup paths and the backstop)."""
    with _registry_lock:
        daemons, procs = list(_live_daemons), list(_live_procs)
    for d in daemons:
        try:
            d.cleanup(quiet=True)
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
    for p in procs:
        kill_pid_and_group(p.pid)


@dataclass
class Completed:
    returncode: int
    stdout: str
    stderr: str
    elapsed: float
    leftovers: list = field(default_factory=list)  # tagged processes that outlived it (killed since)

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_dpengined(args: Iterable[str], timeout: float = 20.0, env: Optional[dict] = None,
                  tag: Optional[str] = None) -> Completed:
    """Runs dpengined to completion (e.g. --check-config), in its own session; killed with its
    whole group after `timeout` (then TestFailure). `tag` is added to its environment as
    DPENGINE_TEST_TAG: processes carrying it that outlive the daemon are reported in
    `.leftovers` (and killed)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.pop("NOTIFY_SOCKET", None)
    if tag:
        full_env["DPENGINE_TEST_TAG"] = tag
    start = time.monotonic()
    proc = subprocess.Popen([dpengined_path(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full_env, start_new_session=True)
    with _registry_lock:
        _live_procs.add(proc)
    try:
        out, err = communicate_within(proc, timeout, f"dpengined {' '.join(args)}")
    finally:
        elapsed = time.monotonic() - start
        leftovers: list[int] = []
        if tag and proc.returncode is not None:
            # Whatever still carries the tag shortly after the exit outlived the daemon (ranks
            # die by PR_SET_PDEATHSIG, asynchronously: allow a moment).
            entry = f"DPENGINE_TEST_TAG={tag}"
            if wait_until(lambda: not processes_tagged(entry), 2.0) is None:
                leftovers = processes_tagged(entry)
        kill_pid_and_group(proc.pid, group_only=proc.returncode is not None)  # anything left in its group
        for pid in leftovers:  # rank processes have groups of their own
            kill_pid_and_group(pid)
        with _registry_lock:
            _live_procs.discard(proc)
    return Completed(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                     elapsed, leftovers)


class DaemonExited(TestFailure):
    pass


class Daemon:
    """One dpengined with its own temp directory (config, runtime directory, notify socket,
    log). Use as a context manager; `with Daemon(cfg) as d: d.wait_ready()`.

    config: a dict merged over the defaults this class provides (frontend.host = 127.0.0.1,
            frontend.port = a free port, daemon.runtime_directory = <tmp>/run, created empty).
            With base=False, or a str (TOML text), the config is written exactly as given and
            `port` is then only meaningful if the caller passes --port in `args` itself.
    args:   extra command-line arguments.
    env:    extra environment (e.g. WATCHDOG_USEC); NOTIFY_SOCKET and a unique
            DPENGINE_TEST_TAG are always set (the tag finds every process it started).
    name:   a label for the output.
    user:   run it as this user (with the user's groups, by setpriv), as the unit does with
            User=dpengine; the temp directory is opened to it and the runtime directory is its.
    wrapper: a command that execs dpengined, given as its first arguments (e.g. ["prlimit",
            "--nofile=128:128", "--"]); the daemon keeps the wrapper's pid.
    """

    def __init__(self, config: Optional[dict | str] = None, args: Iterable[str] = (),
                 env: Optional[dict] = None, name: str = "dpengined", base: bool = True,
                 user: Optional[str] = None, wrapper: Iterable[str] = ()):
        self.name = name
        self.user = user
        self.tmp = tempfile.mkdtemp(prefix=f"dpe-{name}-")
        self.runtime_dir = os.path.join(self.tmp, "run")
        os.mkdir(self.runtime_dir, 0o750)
        self.port = free_port()
        if isinstance(config, str) or not base:
            self.config = config if config is not None else {}
        else:
            self.config = merge({
                "frontend": {"host": HOST, "port": self.port},
                "daemon": {"runtime_directory": self.runtime_dir},
            }, config)
            self.port = self.config["frontend"]["port"]
        self.config_path = write_config(self.tmp, self.config)
        self.args = list(args)
        self.wrapper = list(wrapper)
        self.extra_env = dict(env or {})
        self.tag = f"DPENGINE_TEST_TAG={uuid.uuid4().hex}"
        self.log_path = os.path.join(self.tmp, "dpengined.log")
        self.stdout_path = os.path.join(self.tmp, "dpengined.stdout")
        self.notify: Optional[NotifyListener] = None
        self.proc: Optional[subprocess.Popen] = None
        self.returncode: Optional[int] = None
        self._known_ranks: dict[int, int] = {}  # pid → rank, every rank pid seen
        self._cleaned = False

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> "Daemon":
        self.notify = NotifyListener(os.path.join(self.tmp, "notify.sock"))
        env = dict(os.environ)
        env.pop("WATCHDOG_PID", None)
        env.pop("WATCHDOG_USEC", None)
        env.pop("RUNTIME_DIRECTORY", None)
        env.pop("JOURNAL_STREAM", None)  # log to the captured stderr, never the journal
        env["NOTIFY_SOCKET"] = self.notify.path
        name, value = self.tag.split("=", 1)
        env[name] = value
        env.update(self.extra_env)
        argv = [*self.wrapper, dpengined_path(), "--config", self.config_path, *self.args]
        if self.user is not None:
            account = pwd.getpwnam(self.user)
            os.chmod(self.tmp, 0o755)
            os.chmod(self.notify.path, 0o666)
            os.chown(self.runtime_dir, account.pw_uid, account.pw_gid)
            argv = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--", *argv]
        with open(self.log_path, "wb") as logf, open(self.stdout_path, "wb") as outf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=outf, stderr=logf, env=env,
                                         start_new_session=True)
        with _registry_lock:
            _live_daemons.add(self)
        log(f"[{self.name}] started pid {self.proc.pid}: {' '.join(argv)} (port {self.port})")
        return self

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and not isinstance(exc, KeyboardInterrupt):
            self.dump_log()
        self.cleanup()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def poll(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Waits for READY=1 on the notify socket; fails with the log tail if the daemon exits
        first or the time runs out."""
        timeout *= slow_factor()
        got = self.notify.wait_for(lambda m: m == "READY=1", timeout, give_up=lambda: not self.running())
        if got:
            self.ranks()  # remember the rank pids for cleanup
            log(f"[{self.name}] READY=1 (ranks {sorted(self.ranks().items())})")
            return
        if not self.running():
            raise DaemonExited(f"[{self.name}] exited with status {self.proc.returncode} before READY=1; log:\n"
                               f"{tail(self.log_text())}")
        raise TestFailure(f"[{self.name}] no READY=1 within {timeout:.0f} s; notify: {self.notify.messages()}; log:\n"
                          f"{tail(self.log_text())}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Sends `sig` and waits for the exit; returns the exit status (negative: killed by a
        signal). On timeout, kills everything and raises TestFailure."""
        assert self.proc is not None
        self.ranks()
        if self.running():
            os.kill(self.proc.pid, sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30.0) -> int:
        timeout *= slow_factor()
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.cleanup(quiet=True)
            raise TestFailure(f"[{self.name}] did not exit within {timeout:.0f} s; log:\n{tail(self.log_text())}")
        return self.returncode

    def kill(self) -> None:
        """SIGKILL to the daemon process only (its ranks must go by PR_SET_PDEATHSIG)."""
        self.ranks()
        if self.running():
            os.kill(self.proc.pid, signal.SIGKILL)
        try:
            self.returncode = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def cleanup(self, quiet: bool = False) -> None:
        """Kills the daemon's process group, every rank it started (each has its own group) and
        anything else carrying this daemon's environment tag; removes the temp directory."""
        if self._cleaned:
            return
        self._cleaned = True
        try:
            if self.proc is not None:
                alive = self.running()
                if alive:
                    self.ranks()
                kill_pid_and_group(self.proc.pid, group_only=not alive)
                for pid in list(self._known_ranks):
                    if pid_alive(pid) and environ_has(pid, self.tag):
                        kill_pid_and_group(pid)
                for pid in processes_tagged(self.tag):
                    kill_pid_and_group(pid)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    pass
                if self.returncode is None:
                    self.returncode = self.proc.returncode
                left = wait_until(lambda: not processes_tagged(self.tag), 5)
                if left is None and not quiet:
                    log(f"[{self.name}] warning: processes survived cleanup: {processes_tagged(self.tag)}")
        finally:
            if self.notify is not None:
                self.notify.close()
            with _registry_lock:
                _live_daemons.discard(self)
            if os.environ.get("DPENGINE_TEST_KEEP"):
                log(f"[{self.name}] kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- observation -------------------------------------------------------------------------

    def log_text(self) -> str:
        return file_text(self.log_path)

    def stdout_text(self) -> str:
        return file_text(self.stdout_path)

    def dump_log(self, n: int = 6000) -> None:
        log(f"----- [{self.name}] log (tail) -----\n{tail(self.log_text(), n)}\n----- end of log -----")

    def wait_log(self, pattern: str, timeout: float = 10.0) -> Optional[re.Match]:
        """Waits for a regex to match the log; returns the match or None."""
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.log_text()), timeout * slow_factor())

    def rank_pids(self) -> list[int]:
        """Live rank processes (children of the daemon), by pid."""
        if not self.running():
            return []
        pids = children_of(self.proc.pid)
        for p in pids:
            if p not in self._known_ranks:
                # A child caught between fork and exec still shows the daemon's command line;
                # remember it only once it names its rank, or it would never count as a rank.
                rank = rank_of_pid(p)
                if rank is not None:
                    self._known_ranks[p] = rank
        return pids

    def ranks(self) -> dict[int, int]:
        """Live rank processes as {global rank: pid}."""
        out = {}
        for p in self.rank_pids():
            r = self._known_ranks.get(p)
            if r is not None:
                out[r] = p
        return out

    def known_rank_pids(self) -> list[int]:
        """Every rank pid seen so far, alive or not."""
        return sorted(self._known_ranks)

    def notify_messages(self) -> list[str]:
        return self.notify.messages() if self.notify else []

    def status_lines(self) -> list[str]:
        return [m[len("STATUS="):] for m in self.notify_messages() if m.startswith("STATUS=")]

    def tagged_processes(self) -> list[int]:
        return processes_tagged(self.tag)


def check_log_clean(d: "Daemon") -> None:
    """No sanitizer report (ASan, LSan, UBSan, TSan) and no crash in a daemon's log (its ranks log to
    the daemon's stderr)."""
    bad = [l for l in d.log_text().splitlines()
           if re.search(r"AddressSanitizer|LeakSanitizer|ThreadSanitizer|runtime error:|killed by signal (SEGV|ABRT|BUS|ILL)", l)]
    check(not bad, f"[{d.name}] no sanitizer report or crash in the log", "\n".join(bad[:10]))


def check_serves(d: "Daemon", what: str) -> None:
    """The daemon still answers a completion with exactly the expected text, and still runs
    (after or during `what`)."""
    prompt = f"still serving: {what}"
    status, body = post_json(d.port, "/v1/completions", {"prompt": prompt, "max_tokens": 5})
    check(status == 200 and body["choices"][0]["text"] == synthetic_completion(prompt, 0, 5).text,
          f"the daemon serves a completion ({what})", (status, body))
    check(d.running(), f"the daemon is running ({what})")


# ---------------------------------------------------------------------------------------------
# HTTP


def _body_bytes(body: Any) -> Optional[bytes]:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode("utf-8", "replace")


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self) -> Any:
        return _decode(self.body)


def request(port: int, method: str, path: str, body: Any = None, headers: Optional[dict] = None,
            timeout: float = 30.0) -> Response:
    """One HTTP/1.1 exchange on a fresh connection. `body`: dict/list (sent as JSON), str or
    bytes (sent as is)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        conn.request(method, path, body=_body_bytes(body), headers=h)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def post_json(port: int, path: str, body: Any, timeout: float = 30.0,
              headers: Optional[dict] = None) -> tuple[int, Any]:
    """POST → (status, parsed JSON body, or the text when it is not JSON)."""
    r = request(port, "POST", path, body, headers, timeout)
    return r.status, r.json()


def get(port: int, path: str, timeout: float = 30.0) -> tuple[int, Any]:
    r = request(port, "GET", path, None, None, timeout)
    return r.status, r.json()


class HttpStatusError(TestFailure):
    def __init__(self, status: int, body: Any):
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = body


def expect_error(d: "Daemon", path: str, body, status: int, what: str, param: str | None = None,
                 message_has: str | None = None, type_: str = "invalid_request_error", code: str | None = None) -> dict:
    """POSTs `body` to `path` and checks the answer is an OpenAI error object with `status`, `type_`
    (and `param` named in the message, `message_has`, `code` when given), and that the daemon lives."""
    st, resp = post_json(d.port, path, body)
    err = resp.get("error") if isinstance(resp, dict) else None
    ok = st == status and isinstance(err, dict) and err.get("type") == type_ and isinstance(err.get("message"), str)
    if ok and param is not None:
        ok = err.get("param") == param and param in err["message"]
    if ok and message_has is not None:
        ok = message_has in err["message"]
    if ok and code is not None:
        ok = err.get("code") == code
    check(ok, f"{what}: {status} {type_}" + (f", param {param!r} named" if param else "")
          + (f", code {code}" if code else ""), (st, resp))
    check(d.running(), f"{what}: the daemon is alive")
    return err


DONE = "[DONE]"


@dataclass
class SseStream:
    status: int
    events: list = field(default_factory=list)  # decoded JSON objects, and DONE at the end
    error: Optional[str] = None                  # transport trouble (truncation, reset, timeout)
    first_event_at: Optional[float] = None       # time.monotonic() of the first event
    ended_at: Optional[float] = None

    @property
    def done(self) -> bool:
        return bool(self.events) and self.events[-1] == DONE


def stream_sse_full(port: int, path: str, body: Any, timeout: float = 60.0,
                    on_event: Optional[Callable[[Any], None]] = None,
                    connection_hook: Optional[Callable[[http.client.HTTPConnection], None]] = None) -> SseStream:
    """POSTs a streaming request and reads the whole SSE body (to its end, not only to
    [DONE]). Never raises for transport trouble: it lands in `.error`. `timeout` bounds both
    each read and the whole exchange."""
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    if connection_hook:
        connection_hook(conn)
    out = SseStream(status=0)
    try:
        conn.request("POST", path, body=_body_bytes(body), headers={"Content-Type": "application/json",
                                                                    "Accept": "text/event-stream"})
        resp = conn.getresponse()
        out.status = resp.status
        if resp.status != 200:
            out.events = [_decode(resp.read())]
            return out
        data_lines: list[str] = []
        while True:
            if time.monotonic() > deadline:
                out.error = f"stream did not end within {timeout} s"
                break
            raw = resp.readline()
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line.startswith("data:"):
                value = line[5:]
                data_lines.append(value[1:] if value.startswith(" ") else value)
            elif line == "" and data_lines:
                data = "\n".join(data_lines)
                data_lines = []
                ev = DONE if data == DONE else _decode(data.encode())
                if out.first_event_at is None:
                    out.first_event_at = time.monotonic()
                out.events.append(ev)
                if on_event:
                    on_event(ev)
        if data_lines:
            out.error = "stream ended inside an event"
    except (OSError, http.client.HTTPException) as e:
        out.error = f"{type(e).__name__}: {e}"
    finally:
        out.ended_at = time.monotonic()
        conn.close()
    return out


def stream_sse(port: int, path: str, body: Any, timeout: float = 60.0) -> list:
    """POSTs a streaming request; returns its events (decoded JSON, then DONE). Raises
    HttpStatusError for a non-200 answer and TestFailure for transport trouble."""
    s = stream_sse_full(port, path, body, timeout)
    if s.status != 200:
        raise HttpStatusError(s.status, s.events[0] if s.events else None)
    if s.error:
        raise TestFailure(f"stream {path}: {s.error}; events so far: {s.events[-3:]}")
    return s.events


def raw_exchange(port: int, data: bytes, timeout: float = 10.0, shutdown_write: bool = False) -> bytes:
    """Sends raw bytes on a fresh TCP connection and returns everything received until the
    server closes (or `timeout`). Connection resets end the read quietly."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if shutdown_write:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        chunks = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def stream_text(events: list, index: int = 0, chat: bool = False) -> str:
    """Concatenates the text of one choice across stream chunks."""
    parts = []
    for ev in events:
        if not isinstance(ev, dict):
            continue
        for c in ev.get("choices") or []:
            if c.get("index") != index:
                continue
            if chat:
                parts.append((c.get("delta") or {}).get("content") or "")
            else:
                parts.append(c.get("text") or "")
    return "".join(parts)


def stream_finish_reason(events: list, index: int = 0) -> Optional[str]:
    reasons = [c.get("finish_reason") for ev in events if isinstance(ev, dict)
               for c in ev.get("choices") or [] if c.get("index") == index and c.get("finish_reason")]
    return reasons[-1] if reasons else None


def stream_errors(events: list) -> list:
    return [ev["error"] for ev in events if isinstance(ev, dict) and "error" in ev]


# ---------------------------------------------------------------------------------------------
# The synthetic backend's output (daemon/engine/synthetic.hpp, step_loop.cpp, engine/openai.cpp)

MASK64 = (1 << 64) - 1
VOCABULARY = 4096
SYLLABLES = [
    "ba", "be", "bi", "bo", "bu", "da", "de", "di", "do", "du", "fa", "fe", "fi", "fo", "fu", "ga",
    "ge", "gi", "go", "gu", "ka", "ke", "ki", "ko", "ku", "la", "le", "li", "lo", "lu", "ma", "me",
    "mi", "mo", "mu", "na", "ne", "ni", "no", "nu", "pa", "pe", "pi", "po", "pu", "ra", "re", "ri",
    "ro", "ru", "sa", "se", "si", "so", "su", "ta", "te", "ti", "to", "tu", "va", "ve", "vi", "vo"]


def fnv1a64(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & MASK64
    return h


def mix64(z: int) -> int:
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & MASK64
    return z ^ (z >> 31)


def synthetic_token(prompt_hash: int, seed: int, position: int) -> int:
    return mix64(prompt_hash ^ mix64(seed & MASK64) ^ mix64(position + 1)) % VOCABULARY


def synthetic_word(token: int) -> str:
    return SYLLABLES[token // 64] + SYLLABLES[token % 64]


def _prompt_bytes(prompt: str | bytes) -> bytes:
    return prompt if isinstance(prompt, bytes) else prompt.encode("utf-8")


def synthetic_pieces(prompt: str | bytes, seed: int, n_tokens: int) -> list[str]:
    h = fnv1a64(_prompt_bytes(prompt))
    return [" " + synthetic_word(synthetic_token(h, seed, i)) for i in range(n_tokens)]


def synthetic_text(prompt: str | bytes, seed: int = 0, n_tokens: int = 16) -> str:
    """The text the synthetic backend generates for `n_tokens` tokens (no stop strings)."""
    return "".join(synthetic_pieces(prompt, seed, n_tokens))


def prompt_token_count(prompt: str | bytes) -> int:
    """Prompt tokens as the synthetic backend counts them: words separated by ' ', \\n, \\t, \\r."""
    count, in_word = 0, False
    for c in _prompt_bytes(prompt):
        space = c in (0x20, 0x0A, 0x09, 0x0D)
        if not space and not in_word:
            count += 1
        in_word = not space
    return count


def chat_prompt(messages: list[dict]) -> str:
    """The chat conversation as the front-end renders it for the engine."""
    out = ""
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "".join(p["text"] for p in content)
        out += f"{m['role']}: {content or ''}\n"
    return out + "assistant:"


@dataclass
class Expected:
    text: str
    completion_tokens: int
    finish_reason: str
    prompt_tokens: int


def synthetic_completion(prompt: str | bytes, seed: int = 0, max_tokens: int = 16, stop: Iterable[str] = (),
                         max_model_len: int = 8192) -> Expected:
    """What one choice of a request returns, simulating the step loop: a stop string ends the
    text before it (finish "stop"), else max_tokens or max_model_len end it (finish "length")."""
    stops = [s for s in stop if s]
    ptoks = prompt_token_count(prompt)
    if ptoks >= max_model_len:
        return Expected("", 0, "length", ptoks)
    h = fnv1a64(_prompt_bytes(prompt))
    text = ""
    generated = 0
    while True:
        piece = " " + synthetic_word(synthetic_token(h, seed, generated))
        text += piece
        generated += 1
        best = None
        for s in stops:
            start = max(0, len(text) - len(piece) - (len(s) - 1))
            at = text.find(s, start)
            if at != -1 and (best is None or at < best):
                best = at
        if best is not None:
            return Expected(text[:best], generated, "stop", ptoks)
        if generated >= max_tokens or ptoks + generated >= max_model_len:
            return Expected(text, generated, "length", ptoks)


def metric_samples(port: int, name: str) -> list:
    """The samples of one /metrics family (python3-prometheus-client's parser; counters lose
    their "_total"), as a list of (labels, value)."""
    r = request(port, "GET", "/metrics", None, None, 10)
    check_eq(r.status, 200, "/metrics status")
    return parse_metric_samples(r.body.decode(), name)


def parse_metric_samples(text: str, name: str) -> list:
    """metric_samples() for /metrics text fetched some other way (e.g. inside a namespace)."""
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return [(s.labels, s.value) for s in family.samples]
    return []


def per_rank_metric(port: int, name: str) -> dict[int, float]:
    """One per-rank /metrics family as {rank: value}."""
    return {int(labels["rank"]): value for labels, value in metric_samples(port, name)}


def dp_group_epochs(d: "Daemon") -> list[tuple[int, list[int]]]:
    """Lockstep mode: every DP group the head formed so far, from its log: (epoch, ranks)."""
    return [(int(m[1]), [int(r) for r in m[2].split(",")])
            for m in re.finditer(r"DP group epoch (\d+): \d+ rank\(s\) \[([\d,]*)\]", d.log_text())]


# ---------------------------------------------------------------------------------------------
# Running a test


def run_test(main: Callable[[], None], timeout: float = 120.0) -> None:
    """Runs `main` with a time bound (SIGALRM raises in the main thread, so `finally` blocks
    run; a backstop kills everything if even that hangs), then exits 0 on success, 1 on
    failure. The bound is scaled for sanitizer builds."""
    name = os.path.basename(sys.argv[0])
    bound = timeout * slow_factor()
    log(f"== {name}: build {build_dir()}{' (sanitized)' if is_sanitized_build() else ''}, time bound {bound:.0f} s")

    class Overrun(BaseException):
        pass

    def on_alarm(_sig, _frame):
        raise Overrun(f"{name} did not finish within {bound:.0f} s")

    def on_term(sig, _frame):
        raise Overrun(f"{name} was stopped by signal {signal.Signals(sig).name}")

    def backstop():
        log(f"FAIL: {name}: still running {bound + 30:.0f} s after start; killing everything")
        kill_everything()
        os._exit(3)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)  # e.g. `timeout`: still clean up on the way out
    signal.signal(signal.SIGHUP, on_term)
    signal.setitimer(signal.ITIMER_REAL, bound)
    guard = threading.Timer(bound + 30, backstop)
    guard.daemon = True
    guard.start()
    start = time.monotonic()
    ok = False
    try:
        main()
        ok = not _soft_failures
        if _soft_failures:
            log(f"{len(_soft_failures)} check(s) failed:\n" + "\n".join(_soft_failures))
    except TestFailure as e:
        log(str(e))
    except Overrun as e:
        log(f"FAILED: {e}")
        traceback.print_exc()
    except Exception:  # noqa: BLE001 - any error fails the test, with its trace
        traceback.print_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        kill_everything()
        guard.cancel()
    elapsed = time.monotonic() - start
    log(f"== {'PASS' if ok else 'FAIL'}: {name} ({elapsed:.1f} s)")
    sys.stdout.flush()
    os._exit(0 if ok else 1)  # do not wait for stray worker threads
