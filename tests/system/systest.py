"""What the system tests share: checks that collect failures, bounded waits, the package and the
image they boot, and the frame that runs a test and always stops its virtual machines.

A test's flow is a function flow(deb, image, work) that boots its VMs (tests/system/vm.py) with
boot(), checks with check() and stops at the first failed require(). main(flow) skips (exit 77)
without root or the tools, stops every VM that boot() started whatever happens, prints the time
of each phase and exits 1 when any check failed.

The package and the image come from prepare(): from $DPENGINE_SYSTEM_PREPARED, the file that
tests/system/prepare.py wrote (CTest runs it once before the system tests), or, when a test is
run by hand, made for this run: cpack's .deb of $DPENGINE_BUILD_DIR (or $DPENGINE_DEB) and the
image of build-image, cached in $DPENGINE_BUILD_DIR/system-image.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.path.abspath(os.environ.get("DPENGINE_BUILD_DIR", os.path.join(SRC, "build")))
SKIP = 77
TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4", "ssh", "scp", "ssh-keygen", "cpack")

failures: list[str] = []
timings: list[tuple[str, float]] = []
machines: list = []  # every VM that boot() started, stopped by run()


class StepFailed(Exception):
    pass


def check(cond: object, what: str, detail: object = None) -> bool:
    if cond:
        print(f"ok: {what}", flush=True)
    else:
        print(f"FAILED: {what}" + (f"\n    {detail}" if detail else ""), flush=True)
        failures.append(what)
    return bool(cond)


def require(cond: object, what: str, detail: object = None) -> None:
    """A check that later steps depend on: stops the flow when it fails."""
    if not check(cond, what, detail):
        raise StepFailed(what)


def out(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}; stdout: {res.stdout.strip()[-1500:]!r}; stderr: {res.stderr.strip()[-1500:]!r}"


def wait_for(vm, script: str, pred: Callable[[subprocess.CompletedProcess], bool], timeout: float,
             interval: float = 2.0) -> subprocess.CompletedProcess:
    """Runs script in vm until pred(result) holds or timeout passes; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        res = vm.run(script, timeout=60)
        if pred(res) or time.monotonic() > deadline:
            return res
        time.sleep(interval)


def timed(what: str, started: float) -> None:
    timings.append((what, time.monotonic() - started))


def json_or(text: str, default: object) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return default


# ---- the service in a guest ----

def install_deb(vm, deb: str) -> None:
    """apt install of the .deb in the guest, with no network (its dependencies are in the image)."""
    vm.copy_in(deb, "/root/")
    res = vm.run("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
                 f"./{shlex.quote(os.path.basename(deb))}", timeout=300)
    require(res.returncode == 0, f"{vm.name}: apt install ./dpengine_*.deb with no network", out(res))
    require(vm.run("getent group dpengine && test -x /usr/sbin/dpengined && test -x /usr/bin/dpctl").returncode == 0,
            f"{vm.name}: the package made group dpengine and installed dpengined and dpctl")


def unit_prop(vm, prop: str) -> str:
    return vm.run(f"systemctl show -P {prop} dpengined").stdout.strip()


def wait_active(vm, what: str, timeout: float = 240.0, old_pid: str | None = None) -> str:
    """Waits until the unit is active (with a MainPID other than old_pid); returns MainPID."""
    res = wait_for(vm, "systemctl is-active dpengined; systemctl show -P MainPID dpengined",
                   lambda r: r.stdout.split()[:1] == ["active"] and r.stdout.split()[1:2] not in ([], ["0"], [old_pid]),
                   timeout)
    words = res.stdout.split()
    require(words[:1] == ["active"] and words[1:2] not in ([], ["0"], [old_pid]), what, out(res))
    return words[1]


def dpctl_json(vm, verb: str, user: str = "root") -> list[dict]:
    """dpctl VERB --json in the guest, parsed."""
    res = vm.run(f"dpctl {verb} --json", user=user)
    if res.returncode != 0:
        raise StepFailed(f"{vm.name}: dpctl {verb} --json: {out(res)}")
    return json.loads(res.stdout)


# ---- the package and the image ----

def make_deb(out_dir: str) -> str:
    """cpack's .deb of BUILD in out_dir; returns its path."""
    if os.environ.get("DPENGINE_DEB"):
        return os.environ["DPENGINE_DEB"]
    shutil.rmtree(out_dir, ignore_errors=True)
    # One cpack at a time per build directory (the packaging integration tests run it too).
    with open(os.path.join(BUILD, ".dpengine-cpack.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = subprocess.run(["cpack", "--config", os.path.join(BUILD, "CPackConfig.cmake"), "-G", "DEB", "-B", out_dir],
                             capture_output=True, text=True, timeout=600)
    debs = glob.glob(os.path.join(out_dir, "dpengine_*.deb"))
    if res.returncode != 0 or len(debs) != 1:
        raise StepFailed(f"cpack -G DEB: exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return debs[0]


def build_image(deb: str) -> str:
    """The image directory of build-image for deb (built, or taken from the cache)."""
    res = subprocess.run([os.path.join(HERE, "build-image"), os.path.join(BUILD, "system-image"), deb],
                         capture_output=True, text=True, timeout=1500)
    if res.returncode != 0:
        raise StepFailed(f"build-image: exit {res.returncode}\n{res.stderr[-3000:]}")
    return res.stdout.strip().splitlines()[-1]


def make_package_and_image() -> tuple[str, str]:
    """cpack's .deb (in BUILD/system-image/deb) and the image for it; records the time of each."""
    started = time.monotonic()
    deb = make_deb(os.path.join(BUILD, "system-image", "deb"))
    timed("package (cpack)", started)
    started = time.monotonic()
    image = build_image(deb)
    timed("image (build or cache)", started)
    return deb, image


def prepare() -> tuple[str, str]:
    """(deb, image directory) for this run: prepare.py's, or made now when run by hand."""
    prepared = os.environ.get("DPENGINE_SYSTEM_PREPARED")
    if not prepared:
        return make_package_and_image()
    try:
        with open(prepared) as f:
            p = json.load(f)
        return p["deb"], p["image"]
    except (OSError, ValueError, KeyError) as e:
        raise StepFailed(f"{prepared}: {e} (tests/system/prepare.py writes it)")


# ---- running a test ----

def boot(*vms) -> None:
    """Starts the VMs side by side and waits until each answers ssh; records their boot times."""
    machines.extend(v for v in vms if v not in machines)
    errors: list[BaseException] = []

    def start(vm) -> None:
        try:
            vm.start()
        except BaseException as e:  # reported below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=start, args=(vm,)) for vm in vms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise StepFailed(f"boot: {errors[0]}")
    for vm in vms:
        timings.append((f"{vm.name}: boot to ssh", vm.boot_seconds))


def missing_tool() -> str | None:
    return next((t for t in TOOLS if shutil.which(t) is None), None)


def run(flow: Callable[[str, str, str], None]) -> int:
    """Runs flow(deb, image, work) and reports; returns the exit status."""
    if os.geteuid() != 0:
        print("SKIP: needs root (debootstrap builds the image)", flush=True)
        return SKIP
    tool = missing_tool()
    if tool:
        print(f"SKIP: {tool} is missing (scripts/install-deps installs it)", flush=True)
        return SKIP
    work = tempfile.mkdtemp(prefix="dpengine-vm-")
    try:
        deb, image = prepare()
        flow(deb, image, work)
    except StepFailed as e:
        print(f"stopped: {e}", flush=True)
        if str(e) not in failures:
            failures.append(str(e).splitlines()[0])
    except subprocess.TimeoutExpired as e:
        check(False, f"bounded wait ran out: {e.cmd if isinstance(e.cmd, str) else shlex.join(map(str, e.cmd))[:300]}")
    finally:
        for vm in machines:
            if failures:
                print(f"---- console of {vm.name} (tail) ----\n" + vm.console_tail(60), flush=True)
            vm.close()
        if os.environ.get("DPENGINE_SYSTEM_KEEP") == "1":
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    for what, seconds in timings:
        print(f"time: {what}: {seconds:.0f} s")
    if failures:
        print(f"FAILED: {len(failures)} check(s): " + "; ".join(failures))
        return 1
    print("PASS")
    return 0


def main(flow: Callable[[str, str, str], None]) -> None:
    sys.exit(run(flow))
