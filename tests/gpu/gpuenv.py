"""What tests/gpu/run and bench/gpu share on the GPU machine: the bundle made by
scripts/gpu-bundle, the environment its programs need, a dpengined started from a config,
HTTP through urllib and the GPU's memory through nvidia-smi. Standard library only: the GPU
machine has python3 but no packages beyond it."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.environ.get("DPENGINE_GPU_BUNDLE", os.path.join(REPO, "gpu-bundle"))
BIN = os.path.join(BUNDLE, "bin")
LIB = os.path.join(BUNDLE, "lib")
CUDA_LIB_DIRS = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
                 "/usr/lib/x86_64-linux-gnu"]


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def require_gpu_machine() -> str:
    """The GPU's name, or exit 2 with what is missing."""
    if not os.path.isfile(os.path.join(BIN, "dpengine-cuda.so")):
        say(f"no bundle at {BUNDLE}: run scripts/gpu-bundle on the build machine (which has the CUDA toolkit) "
            f"and bring the folder along (or set DPENGINE_GPU_BUNDLE)")
        sys.exit(2)
    smi = shutil.which("nvidia-smi")
    if not smi:
        say("no GPU here: nvidia-smi is not installed; run this on a machine with an NVIDIA GPU and driver")
        sys.exit(2)
    r = subprocess.run([smi, "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        say(f"no GPU here: nvidia-smi found none ({(r.stderr or r.stdout).strip()})")
        sys.exit(2)
    return r.stdout.strip().splitlines()[0]


def find_nccl() -> str | None:
    for d in CUDA_LIB_DIRS + ["/usr/lib64", "/opt/nccl/lib"]:
        hits = sorted(glob.glob(os.path.join(d, "libnccl.so.2*")))
        if hits:
            return hits[0]
    return None


def program_env() -> dict:
    """The environment of the bundle's programs (only theirs: python and nvidia-smi keep the
    machine's own libraries)."""
    env = dict(os.environ)
    dirs = [LIB] + [d for d in CUDA_LIB_DIRS if os.path.isdir(d)]
    env["LD_LIBRARY_PATH"] = ":".join(dirs + ([env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else []))
    env["DPENGINE_CUDA_MODULE"] = os.path.join(BIN, "dpengine-cuda.so")
    nccl = find_nccl()
    if nccl:
        env["DPENGINE_NCCL_LIBRARY"] = nccl
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM", "RUNTIME_DIRECTORY"):
        env.pop(name, None)
    env["DBUS_SYSTEM_BUS_ADDRESS"] = "unix:path=/nonexistent"  # no D-Bus there: serve without it
    return env


def gpu_memory_used_mib() -> int:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def gpu_memory_total_mib() -> int:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[0])


def gpu_processes() -> dict[int, int]:
    """pid → MiB, as nvidia-smi lists compute processes (empty inside some containers)."""
    r = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True)
    out = {}
    for line in r.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            out[int(parts[0])] = int(parts[1])
    return out


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml(config: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(v)
    return "".join(f"[{section}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items()) + "\n"
                   for section, keys in config.items())


class Daemon:
    """dpengined from the bundle with CONFIG (sections merged over a private runtime
    directory, loopback HTTP on a free port, generous start-up times)."""

    def __init__(self, config: dict, name: str, env: dict | None = None):
        self.name = name
        self.extra_env = dict(env or {})
        self.tmp = tempfile.mkdtemp(prefix=f"dpe-gpu-{name}-")
        self.port = free_port()
        base = {"frontend": {"host": "127.0.0.1", "port": self.port},
                "daemon": {"runtime_directory": os.path.join(self.tmp, "run")},
                "handshake": {"init_timeout": 120.0, "ready_timeout": 180.0}}
        for section, keys in config.items():
            base.setdefault(section, {}).update(keys)
        self.config_path = os.path.join(self.tmp, "dpengined.toml")
        with open(self.config_path, "w") as f:
            f.write(toml(base))
        self.log_path = os.path.join(self.tmp, "dpengined.log")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Daemon":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([os.path.join(BIN, "dpengined"), "--config", self.config_path],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         env=program_env() | self.extra_env,
                                         start_new_session=True)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_text(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rank_pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if self.proc and ppid == self.proc.pid and argv and argv[0].endswith(b"dpengine-rank"):
                pids.append(int(entry))
        return pids

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, dict | None]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, None
        except (urllib.error.URLError, OSError, ValueError):
            return 0, None

    def post(self, path: str, body: dict, timeout: float = 60.0) -> tuple[int, dict | None]:
        data = json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read())
            except ValueError:
                return e.code, None
        except (urllib.error.URLError, OSError, ValueError) as e:
            return 0, {"error": str(e)}

    def wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                return False
            status, body = self.get("/health", timeout=5)
            if status == 200:
                return True
            time.sleep(0.5)
        return False

    def wait_log(self, needle: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return True
            time.sleep(0.5)
        return needle in self.log_text()

    def stop(self, timeout: float = 60.0) -> int | None:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode
