"""The operator flow on one Debian 12 virtual machine with systemd as PID 1 (issue 15).

Boots the image of tests/system/build-image (built or taken from the cache in
$DPENGINE_BUILD_DIR/system-image) with qemu and does over ssh what an operator does, each
step checking its outcome:

 1. `apt install ./dpengine_*.deb` (the .deb that cpack makes from this build), a drop-in with
    two ranks and a slow synthetic step, `systemctl start dpengined`: active, with a STATUS=;
 2. the journal: the daemon's lines under its unit, the ranks' DPENGINE_UNIT= field,
    SYSLOG_IDENTIFIER=dpengined;
 3. `dpctl status`, `drain`/`undrain` and `restart` as root, as a member of group dpengine
    (through the real polkitd) and as another user (refused, exit status 4);
 4. a completion with curl, its text the synthetic backend's;
 5. `systemctl reload` of a good drop-in (applied) and of a bad one (non-zero, the reason,
    the running configuration kept);
 6. `kill -9` of a rank (restarted, the daemon stays) and of the main PID (the unit restarts),
    with no process left over in the cgroup;
 7. `kill -STOP` of the main PID: the watchdog kills it and the unit restarts;
 8. `systemctl stop` with a stream in flight: the stream completes, the stop is clean;
 9. `systemctl enable`, reboot: active again;
10. `apt remove` (configuration kept, nothing of the unit left) and `apt purge`: only the
    documented leftovers (the dpengine user and group) remain.

Needs root (debootstrap), qemu-system-x86, debootstrap, e2fsprogs, openssh-client; skips
(exit 77) with the reason otherwise. Every step is bounded in time; qemu is killed at the end
whatever happens. Environment: see tests/system/README.md.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from harness import synthetic_text  # noqa: E402
from systest import (check, dpctl_json, install_deb, out, require, timed, timings, unit_prop,  # noqa: E402
                     wait_active, wait_for)
from vm import VM  # noqa: E402
import systest  # noqa: E402

DROPIN = """[data_parallel]
size = 2
[engine]
step_time_ms = 50.0
"""
PROMPT = "the quick brown fox"

def sh(vm: VM, script: str, user: str = "root", timeout: float = 120.0) -> subprocess.CompletedProcess:
    return vm.run(script, user=user, timeout=timeout)


def ranks(vm: VM, user: str = "root") -> list[dict]:
    return dpctl_json(vm, "ranks", user)


def wait_all_ready(vm: VM, timeout: float = 180.0) -> list[dict]:
    res = wait_for(vm, "dpctl ranks --json", lambda r: r.returncode == 0 and
                   all(x["state"] == "ready" for x in json.loads(r.stdout)) and len(json.loads(r.stdout)) == 2,
                   timeout)
    require(res.returncode == 0 and all(x["state"] == "ready" for x in json.loads(res.stdout)),
            "both ranks ready", out(res))
    return json.loads(res.stdout)


def cgroup_processes(vm: VM) -> list[tuple[str, str]]:
    """(pid, comm) of every process in the unit's cgroup."""
    res = sh(vm, "for p in $(cat /sys/fs/cgroup/system.slice/dpengined.service/cgroup.procs); do "
                 "echo $p $(cat /proc/$p/comm 2>/dev/null); done")
    return [tuple(line.split(maxsplit=1)) for line in res.stdout.splitlines() if len(line.split()) == 2]


def check_no_orphans(vm: VM, main_pid: str, what: str) -> None:
    """The cgroup holds the daemon and its two current ranks, nothing else."""
    rank_pids = {str(r["pid"]) for r in ranks(vm)}
    procs = cgroup_processes(vm)
    expected = {main_pid} | rank_pids
    check({p for p, _ in procs} == expected, f"{what}: the cgroup holds the daemon and its 2 ranks only",
          f"cgroup: {procs}; daemon {main_pid}, ranks {sorted(rank_pids)}")


def completion(vm: VM, max_tokens: int | None = 8, user: str = "root") -> subprocess.CompletedProcess:
    body = {"model": "synthetic", "prompt": PROMPT, "seed": 7}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return sh(vm, "curl -sS --max-time 60 -H 'Content-Type: application/json' "
                  f"-d {shlex.quote(json.dumps(body))} http://127.0.0.1:8000/v1/completions", user=user)


# ---- the steps ----

def step_install(vm: VM, deb: str) -> None:
    install_deb(vm, deb)
    sh(vm, f"mkdir -p /etc/dpengine/dpengined.toml.d && printf %s {shlex.quote(DROPIN)} "
           ">/etc/dpengine/dpengined.toml.d/50-system-test.toml")
    started = time.monotonic()
    res = sh(vm, "systemctl start dpengined", timeout=300)
    timed("systemctl start", started)
    require(res.returncode == 0, "systemctl start dpengined", out(res) + "\n" +
            sh(vm, "journalctl -u dpengined --no-pager -n 40").stdout)
    check(sh(vm, "systemctl is-active dpengined").stdout.strip() == "active", "the unit is active after start")
    status = unit_prop(vm, "StatusText")
    check(status != "", "the unit has a STATUS= text", status)
    wait_all_ready(vm)


def step_journal(vm: VM) -> None:
    res = sh(vm, "journalctl -u dpengined -o json --no-pager")
    entries = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    daemon = [e for e in entries if e.get("_SYSTEMD_UNIT") == "dpengined.service"]
    check(len(daemon) > 0, "journalctl -u dpengined shows the daemon's lines", out(res))
    check(any(e.get("DPENGINE_UNIT") == "rank 0" for e in daemon), "rank lines carry DPENGINE_UNIT=\"rank 0\"",
          sorted({k for e in daemon for k in e if not k.startswith("_")}))
    check(all("PRIORITY" in e for e in daemon), "every line has a PRIORITY")
    res = sh(vm, "journalctl -t dpengined --no-pager -q | head -n 5")
    check(res.stdout.strip() != "", "journalctl -t dpengined finds the daemon's lines", out(res))
    res = sh(vm, "dpctl logs 0 | tail -n 3")
    check(res.returncode == 0 and res.stdout.strip() != "" and "No entries" not in res.stdout,
          "dpctl logs 0 as root shows the rank's lines", out(res))


def step_dpctl_users(vm: VM) -> None:
    # alice operates the service (group dpengine); bob is any other local user. Both log in
    # with the run's key, as an operator would over ssh.
    res = sh(vm, "useradd -m -s /bin/bash -G dpengine alice && useradd -m -s /bin/bash bob && "
                 "for u in alice bob; do install -d -m 0700 -o $u -g $u /home/$u/.ssh && "
                 "install -m 0600 -o $u -g $u /root/.ssh/authorized_keys /home/$u/.ssh/; done")
    require(res.returncode == 0, "users alice (group dpengine) and bob made", out(res))
    for user in ("root", "alice", "bob"):
        res = sh(vm, "dpctl status", user=user)
        check(res.returncode == 0 and "Ready ranks" in res.stdout, f"dpctl status as {user}", out(res))
    for user in ("root", "alice"):
        res = sh(vm, "dpctl drain 1", user=user, timeout=120)
        check(res.returncode == 0, f"dpctl drain 1 as {user}", out(res))
        check(next(r for r in ranks(vm) if r["rank"] == 1)["state"] == "draining", f"rank 1 draining after {user}'s drain")
        res = sh(vm, "dpctl undrain 1", user=user)
        check(res.returncode == 0, f"dpctl undrain 1 as {user}", out(res))
    before = next(r for r in ranks(vm) if r["rank"] == 0)["pid"]
    res = sh(vm, "dpctl restart 0", user="alice", timeout=180)
    check(res.returncode == 0, "dpctl restart 0 as alice (group dpengine, polkitd)", out(res))
    after = next(r for r in ranks(vm) if r["rank"] == 0)
    check(after["state"] == "ready" and after["pid"] != before, "rank 0 ready with a new process after the restart",
          f"before pid {before}, after {after}")
    res = sh(vm, "dpctl restart 1", user="root", timeout=180)
    check(res.returncode == 0, "dpctl restart 1 as root", out(res))
    for cmd in ("drain 1", "restart 1"):
        res = sh(vm, f"dpctl {cmd}", user="bob")
        check(res.returncode == 4, f"dpctl {cmd} as bob (not in group dpengine) is refused with exit status 4", out(res))
    check(all(r["state"] == "ready" for r in ranks(vm)), "both ranks ready after the refusals")
    res = sh(vm, "dpctl logs 0", user="bob")
    check(res.returncode != 0, "dpctl logs as a user who may not read the journal exits non-zero", out(res))


def step_completion(vm: VM) -> None:
    res = completion(vm, user="bob")
    try:
        body = json.loads(res.stdout)
        text = body["choices"][0]["text"]
    except (ValueError, KeyError, IndexError):
        body, text = None, None
    check(text == synthetic_text(PROMPT, 7, 8), "a completion with curl returns the synthetic backend's text",
          f"{out(res)}; expected {synthetic_text(PROMPT, 7, 8)!r}")


def big_body_status(vm: VM) -> str:
    """The HTTP status of a completion whose body is about 3000 bytes."""
    body = {"model": "synthetic", "prompt": "word " * 600, "max_tokens": 1}
    return sh(vm, "curl -sS -o /dev/null -w '%{http_code}' --max-time 60 -H 'Content-Type: application/json' "
                  f"-d {shlex.quote(json.dumps(body))} http://127.0.0.1:8000/v1/completions").stdout.strip()


def default_tokens(vm: VM) -> object:
    """completion_tokens of a completion that does not say max_tokens."""
    try:
        return json.loads(completion(vm, None).stdout)["usage"]["completion_tokens"]
    except (ValueError, KeyError, TypeError):
        return None


def step_reload(vm: VM) -> None:
    check(big_body_status(vm) == "200", "a 3000-byte request is served with the default frontend.max_body_bytes")
    sh(vm, "printf '[frontend]\\nmax_body_bytes = 2000\\n[engine]\\ndefault_max_tokens = 5\\n' "
           ">/etc/dpengine/dpengined.toml.d/60-reload.toml")
    res = sh(vm, "systemctl reload dpengined", timeout=120)
    check(res.returncode == 0, "systemctl reload of a good drop-in succeeds", out(res))
    res = wait_for(vm, "true", lambda r: big_body_status(vm) == "413", 30)
    check(big_body_status(vm) == "413", "the reloaded frontend.max_body_bytes = 2000 applies (413)")
    # engine.default_max_tokens reaches each rank when it next starts (dpengined.toml(5),
    # RELOADING): after a reload the running ranks keep theirs; restarted, they take the new one.
    journal = sh(vm, "journalctl -u dpengined --no-pager -n 30 -o cat").stdout
    check("engine.default_max_tokens" in journal and "next starts" in journal,
          "the journal names engine.default_max_tokens as reaching each rank when it next starts", journal[-1500:])
    for rank in (0, 1):
        res = sh(vm, f"dpctl restart {rank}", timeout=120)
        check(res.returncode == 0, f"dpctl restart {rank}", out(res))
    tokens = default_tokens(vm)
    check(tokens == 5, "after dpctl restart the ranks apply the reloaded engine.default_max_tokens = 5",
          f"completion_tokens {tokens}")

    sh(vm, "printf '[frontend]\\nmax_connections = \"many\"\\n' >/etc/dpengine/dpengined.toml.d/70-bad.toml")
    res = sh(vm, "systemctl reload dpengined", timeout=120)
    check(res.returncode != 0, "systemctl reload of a bad drop-in exits non-zero", out(res))
    reason = wait_for(vm, "journalctl -u dpengined --no-pager -n 30 -o cat",
                      lambda r: "reload refused" in r.stdout, 30).stdout
    check("reload refused" in reason and "frontend.max_connections" in reason,
          "the journal says the reload was refused and names the bad key", reason[-1500:])
    check(sh(vm, "systemctl is-active dpengined").stdout.strip() == "active", "the daemon runs on after the refusal")
    check(big_body_status(vm) == "413", "the running configuration is kept after the refusal")
    sh(vm, "rm -f /etc/dpengine/dpengined.toml.d/60-reload.toml /etc/dpengine/dpengined.toml.d/70-bad.toml")
    check(sh(vm, "systemctl reload dpengined").returncode == 0, "reload after removing the drop-ins")
    wait_for(vm, "true", lambda r: big_body_status(vm) == "200", 30)
    check(big_body_status(vm) == "200", "back to the default frontend.max_body_bytes")


def step_kill(vm: VM) -> None:
    main_pid = unit_prop(vm, "MainPID")
    rank0 = next(r for r in ranks(vm) if r["rank"] == 0)
    sh(vm, f"kill -9 {rank0['pid']}")
    res = wait_for(vm, "dpctl ranks --json", lambda r: r.returncode == 0 and any(
        x["rank"] == 0 and x["state"] == "ready" and x["pid"] != rank0["pid"] for x in json.loads(r.stdout)), 120)
    check(res.returncode == 0 and any(x["rank"] == 0 and x["state"] == "ready" and x["pid"] != rank0["pid"]
                                      for x in json.loads(res.stdout)),
          "kill -9 of rank 0: the daemon starts it again", out(res))
    check(unit_prop(vm, "MainPID") == main_pid, "kill -9 of a rank leaves the daemon running")
    check_no_orphans(vm, main_pid, "after kill -9 of a rank")

    # An operator's drain holds across the rank's crash, until undrain.
    require(sh(vm, "dpctl drain 1").returncode == 0, "dpctl drain 1")
    rank1 = next(r for r in ranks(vm) if r["rank"] == 1)
    sh(vm, f"kill -9 {rank1['pid']}")
    res = wait_for(vm, "dpctl ranks --json", lambda r: r.returncode == 0 and any(
        x["rank"] == 1 and x["pid"] not in (0, None, rank1["pid"]) and x["state"] in ("ready", "draining")
        for x in json.loads(r.stdout)), 120)
    state = next((x["state"] for x in json.loads(res.stdout or "[]") if x["rank"] == 1), None)
    check(state == "draining", "a drained rank killed with -9 comes back draining", out(res))
    check(sh(vm, "dpctl undrain 1").returncode == 0, "dpctl undrain 1")
    wait_all_ready(vm)

    restarts = unit_prop(vm, "NRestarts")
    sh(vm, f"kill -9 {main_pid}")
    new_pid = wait_active(vm, "kill -9 of the main PID: the unit restarts", old_pid=main_pid)
    check(int(unit_prop(vm, "NRestarts") or 0) == int(restarts or 0) + 1, "NRestarts counts the restart")
    wait_all_ready(vm)
    check_no_orphans(vm, new_pid, "after kill -9 of the main PID")


def step_watchdog(vm: VM) -> None:
    main_pid = unit_prop(vm, "MainPID")
    started = time.monotonic()
    sh(vm, f"kill -STOP {main_pid}")
    # WatchdogSec=30s, then RestartSec=5s and the start.
    new_pid = wait_active(vm, "kill -STOP of the main PID: the watchdog kills it and the unit restarts",
                          timeout=240, old_pid=main_pid)
    timed("watchdog restart", started)
    res = sh(vm, "journalctl -u dpengined --no-pager -o cat | grep -i watchdog")
    check("Watchdog timeout" in res.stdout, "systemd logged the watchdog timeout", out(res))
    wait_all_ready(vm)
    check_no_orphans(vm, new_pid, "after the watchdog restart")


def step_stop_with_stream(vm: VM) -> None:
    # 200 tokens at 50 ms a step: about 10 s of stream, well inside daemon.stop_timeout (30 s).
    body = json.dumps({"model": "synthetic", "prompt": PROMPT, "seed": 3, "max_tokens": 200, "stream": True})
    sh(vm, "rm -f /root/stream.out; (curl -sS -N --max-time 120 -H 'Content-Type: application/json' "
           f"-d {shlex.quote(body)} http://127.0.0.1:8000/v1/completions >/root/stream.out 2>&1; "
           "echo $? >/root/stream.rc) >/dev/null 2>&1 </dev/null &")
    res = wait_for(vm, "grep -c '^data: ' /root/stream.out", lambda r: r.stdout.strip().isdigit() and int(r.stdout) >= 3,
                   60, interval=0.5)
    require(res.stdout.strip().isdigit() and int(res.stdout) >= 3, "a stream is in flight", out(res))
    res = sh(vm, "systemctl stop dpengined", timeout=120)
    check(res.returncode == 0, "systemctl stop with a stream in flight", out(res))
    res = wait_for(vm, "cat /root/stream.rc", lambda r: r.returncode == 0, 60)
    stream = sh(vm, "cat /root/stream.out").stdout
    check(res.stdout.strip() == "0" and stream.rstrip().endswith("data: [DONE]"),
          "the stream in flight completed before the daemon stopped", f"curl exit {res.stdout.strip()}; tail {stream[-300:]!r}")
    text = ""
    for line in stream.splitlines():
        if line.startswith("data: {"):
            text += json.loads(line[6:])["choices"][0].get("text", "")
    check(text == synthetic_text(PROMPT, 3, 200), "the drained stream carried the whole text")
    check(unit_prop(vm, "Result") == "success" and unit_prop(vm, "ExecMainStatus") == "0",
          "the stop was clean (Result=success, exit status 0)",
          f"Result {unit_prop(vm, 'Result')}, ExecMainStatus {unit_prop(vm, 'ExecMainStatus')}")
    check(cgroup_processes(vm) == [], "nothing is left in the cgroup after the stop")


def step_enable_reboot(vm: VM) -> None:
    res = sh(vm, "systemctl enable dpengined")
    require(res.returncode == 0, "systemctl enable dpengined", out(res))
    seconds = vm.reboot()
    timings.append(("reboot to ssh", seconds))
    started = time.monotonic()
    wait_active(vm, "after reboot the enabled unit is active again", timeout=240)
    timed("after reboot, to active", started)
    wait_all_ready(vm)
    check(completion(vm).returncode == 0, "serves after the reboot")


def snapshot(vm: VM) -> set[str]:
    res = sh(vm, "find /etc /usr /var/lib /var/cache -xdev 2>/dev/null | sort", timeout=180)
    return set(res.stdout.splitlines())


# Paths that change with any boot or package operation.
NOISE = re.compile(r"^(/var/lib/(dpkg|apt|systemd|ucf|polkit-1|dbus|private)|/var/cache|/etc/ld\.so\.cache|"
                   r"/etc/(passwd|group|shadow|gshadow|subuid|subgid)-?$|/etc/\.pwd\.lock|/etc/machine-id|"
                   r"/etc/ssh/|/home/|/root/)")


def step_remove_purge(vm: VM, before: set[str]) -> None:
    res = sh(vm, "DEBIAN_FRONTEND=noninteractive apt-get remove -y dpengine", timeout=300)
    require(res.returncode == 0, "apt remove dpengine", out(res))
    check(sh(vm, "test -f /etc/dpengine/dpengined.toml && test -d /etc/dpengine/keys").returncode == 0,
          "apt remove keeps the configuration and the keys")
    check(sh(vm, "test ! -e /usr/sbin/dpengined && test ! -e /usr/bin/dpctl").returncode == 0, "the programs are gone")
    check(sh(vm, "pgrep -x dpengined || pgrep -x dpengine-rank").returncode == 1, "no dpengine process runs")
    res = sh(vm, "ls -l /etc/systemd/system/multi-user.target.wants/dpengined.service 2>&1")
    check(res.returncode != 0, "apt remove leaves no enable symlink to a unit that is gone", out(res))
    res = sh(vm, "DEBIAN_FRONTEND=noninteractive apt-get purge -y dpengine", timeout=300)
    require(res.returncode == 0, "apt purge dpengine", out(res))
    after = snapshot(vm)
    added = sorted(p for p in after - before if not NOISE.match(p))
    check(added == [], "after purge nothing of the package is left on disk", added[:40])
    res = sh(vm, "getent passwd dpengine && getent group dpengine")
    check(res.returncode == 0, "the dpengine user and group stay (the documented leftovers)", out(res))


def flow(deb: str, image: str, work: str) -> None:
    vm = VM(image, os.path.join(work, "vm"))
    systest.boot(vm)
    before = snapshot(vm)
    step_install(vm, deb)
    step_journal(vm)
    step_dpctl_users(vm)
    step_completion(vm)
    step_reload(vm)
    step_kill(vm)
    step_watchdog(vm)
    step_stop_with_stream(vm)
    step_enable_reboot(vm)
    step_remove_purge(vm, before)


if __name__ == "__main__":
    systest.main(flow)
