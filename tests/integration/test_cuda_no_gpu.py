"""The cuda backend on a machine without a usable GPU, and the build's module boundary.

1. dpengine-rank and dpengined have no CUDA or NCCL library among their ELF NEEDED entries:
   the cuda backend is a module the rank loads only for engine.backend = "cuda", so one
   package serves GPU and CPU nodes. Where the CUDA toolkit is installed (/usr/local/cuda),
   the module dpengine-cuda.so is built beside dpengine-rank. Nor does dpengine-rank load
   gloo or libsystemd at every start: gloo is the module dpengine-gloo.so (built beside it,
   linking libgloo), and a lockstep rank that cannot load it fails at initialisation (exit 78,
   not restarted) with a message naming the module's path and the package.
2. engine.backend = "cuda" with no usable GPU (no NVIDIA driver or no device here): dpengined
   starts, the rank fails at initialisation with a message naming the problem and the fix,
   exits 78 (EX_CONFIG) and is not restarted; the daemon keeps serving /health (naming the
   missing rank), /metrics and clear 503s. With DPENGINE_CUDA_MODULE naming a missing file,
   the message names the module path and the package instead.
3. Lockstep with data_parallel.group = "auto" and the synthetic backend forms a gloo group and
   serves a completion.
Skipped (exit 0 with a message) on a machine where a GPU is usable: tests/gpu/run covers it.
"""

import os
import shutil
import subprocess
import time

import faults
from harness import (Daemon, build_dir, check, check_eq, check_in, check_log_clean, dpengined_path, log, post_json,
                     rank_program_path, run_test)

CUDA_LIBRARIES = ("libcuda.so", "libcudart.so", "libnccl.so", "libcublas")


def needed(path: str) -> list[str]:
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def check_elf() -> None:
    for program in (rank_program_path(), dpengined_path()):
        libs = needed(program)
        log(f"{os.path.basename(program)} NEEDED: {', '.join(libs)}")
        check(libs, f"{program}: readelf lists its NEEDED libraries")
        bad = [lib for lib in libs if lib.startswith(CUDA_LIBRARIES)]
        check(not bad, f"{os.path.basename(program)} links no CUDA/NCCL library", bad)
    rank_libs = needed(rank_program_path())
    check(not [lib for lib in rank_libs if lib.startswith(("libgloo", "libsystemd"))],
          "dpengine-rank loads neither gloo nor libsystemd at start", rank_libs)
    gloo_module = os.path.join(build_dir(), "daemon", "dpengine-gloo.so")
    check(os.path.exists(gloo_module) and any(lib.startswith("libgloo") for lib in needed(gloo_module)),
          "the gloo DP group module is built beside dpengine-rank and links libgloo", gloo_module)
    module = os.path.join(build_dir(), "daemon", "dpengine-cuda.so")
    with open(os.path.join(build_dir(), "CMakeCache.txt")) as f:
        switched_off = "DPENGINE_CUDA:BOOL=OFF" in f.read()
    if switched_off:
        check(not os.path.exists(module), "built with -DDPENGINE_CUDA=OFF: no cuda backend module", module)
    elif os.path.exists("/usr/local/cuda/include/cuda_runtime.h") and os.path.exists("/usr/local/cuda/lib64/libcublas.so"):
        check(os.path.exists(module), "the CUDA toolkit is installed: the cuda backend module is built", module)
        libs = needed(module)
        check(any(lib.startswith("libcublas") for lib in libs), "the module links cuBLAS", libs)
        check(not any(lib.startswith("libnccl") for lib in libs), "the module loads NCCL at run time, not by link", libs)
    else:
        log("no CUDA toolkit in /usr/local/cuda: the module is not expected")


CUDA_CONFIG = {"data_parallel": {"size": 1}, "engine": {"backend": "cuda"}}


def check_failed_rank(config: dict, env: dict, needles: list[str], what: str) -> None:
    config = {**config, "supervision": {"restart_backoff": 0.1}}
    with Daemon(config, env=env, name="module-missing") as d:
        check(d.wait_log(r"rank 0 will not be restarted: it exited with status 78", 30),
              f"{what}: the supervisor will not restart the rank (exit 78)", d.log_text()[-3000:])
        text = d.log_text()
        for needle in needles:
            check_in(needle, text, f"{what}: the log names the problem and the fix")
        time.sleep(3.0)
        check_eq(d.log_text().count("rank 0 started"), 1, f"{what}: the rank was started once, not in a loop")
        h = faults.health(d.port)
        check(h and h.get("status") == "unavailable" and any("rank 0" in m for m in h.get("missing", [])),
              f"{what}: /health answers, naming rank 0 as missing", h)
        events = faults.rank_events(d.port)
        check_eq(events.get((0, "init-failed")), 1, f"{what}: init-failed counted once in /metrics")
        status, body = post_json(d.port, "/v1/completions", {"prompt": "x", "max_tokens": 2}, timeout=10)
        check(status == 503, f"{what}: a request gets a clear 503", (status, body))
        check(d.running(), f"{what}: the daemon keeps running")
        check_eq(d.stop(), 0, f"{what}: exit status after SIGTERM")
        check_log_clean(d)


def gpu_usable() -> bool:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    r = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return r.returncode == 0 and "GPU" in r.stdout


def check_auto_is_gloo() -> None:
    config = {"data_parallel": {"size": 2, "dp_sync": "lockstep", "group": "auto"}}
    with Daemon(config, name="auto-gloo") as d:
        d.wait_ready()
        check(d.wait_log(r"DP group epoch \d+: 2 rank\(s\) \[0,1\], gloo", 30),
              "group = \"auto\" without GPUs forms a gloo group", d.log_text()[-2000:])
        status, body = post_json(d.port, "/v1/completions", {"prompt": "auto group", "max_tokens": 3}, timeout=30)
        check_eq(status, 200, "a completion in the gloo lockstep group")
        check_eq(d.stop(), 0, "exit status after SIGTERM")


def main() -> None:
    check_elf()
    check_auto_is_gloo()
    missing_gloo = os.path.join(build_dir(), "no-such-dir", "dpengine-gloo.so")
    check_failed_rank({"data_parallel": {"size": 1, "dp_sync": "lockstep", "group": "gloo"}},
                      {"DPENGINE_GLOO_MODULE": missing_gloo},
                      ["the gloo DP group module is not installed", missing_gloo, "reinstall the dpengine package"],
                      "gloo module missing")
    if gpu_usable():
        log("SKIP the no-GPU checks: this machine has a usable GPU (tests/gpu/run covers it)")
        return
    module = os.path.join(build_dir(), "daemon", "dpengine-cuda.so")
    if os.path.exists(module):
        check_failed_rank(CUDA_CONFIG, {}, ["engine.backend = \"cuda\"", "install the NVIDIA driver",
                               'engine.backend = "synthetic"'], "no driver")
    missing = os.path.join(build_dir(), "no-such-dir", "dpengine-cuda.so")
    check_failed_rank(CUDA_CONFIG, {"DPENGINE_CUDA_MODULE": missing},
                      ["the cuda backend module is not installed", missing, "install a dpengine package built with "
                       "the CUDA toolkit"], "module missing")


if __name__ == "__main__":
    run_test(main, timeout=150)
