"""Installs the .deb on this machine, uses it, removes it, purges it (issue 6, tests 2 and 4).

1. cpack -G DEB; `apt-get install ./dpengine_*.deb`.
2. `dpengined --check-config` on the shipped /etc/dpengine/dpengined.toml, `dpctl --version`,
   the man pages open with man(1), `systemd-analyze verify` on the installed unit; the user,
   group and key directory exist.
3. The installed daemon, started as the dpengine user with what of the unit's sandbox works
   without systemd as PID 1 (setpriv: its user and group, no new privileges, no
   capabilities, UMask 0027; the unit's ProtectProc= as a private /proc; $RUNTIME_DIRECTORY
   and $NOTIFY_SOCKET as systemd would set them; a private system bus with the installed
   D-Bus policy), sends READY=1 and serves a completion that matches the synthetic backend;
   everyone may list its ranks with dpctl, a member of group dpengine may drain one and
   others may not; SIGTERM stops it with status 0.
4. `apt-get remove` keeps the configuration and the keys; `apt-get purge` removes them, and
   nothing but the expected leftovers (the dpengine user and group, and the files that the
   account tools rewrite) remains; the test then deletes the user and group it caused.

Changes the machine, so it runs only where that is safe: as root, with no dpengine package,
/etc/dpengine or /var/lib/dpengine present, and (to save time) not in a sanitizer build; it
skips with a printed reason otherwise. Everything it installs or creates is removed in
`finally`, also when a check fails.
"""

from __future__ import annotations

import fcntl
import glob
import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile

from checklist import BUILD, cache_value, check, run, set_deadline, verdict
from busharness import bus_config
from harness import NotifyListener, free_port, post_json, synthetic_text

set_deadline(270)

APT_ENV = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
# What a snapshot covers: the places the package writes to, and where leftovers would be.
WATCHED = ["/etc", "/usr/sbin", "/usr/bin", "/usr/libexec", "/usr/lib/systemd/system", "/usr/lib/sysusers.d",
           "/usr/lib/tmpfiles.d", "/usr/share/dbus-1", "/usr/share/polkit-1", "/usr/share/man/man1",
           "/usr/share/man/man5", "/usr/share/man/man7", "/usr/share/man/man8", "/usr/share/doc",
           "/usr/share/lintian/overrides", "/var/lib"]
# Paths under WATCHED that change on their own or with any package operation.
NOISE = re.compile(r"^(/var/lib/(dpkg|apt|systemd|ucf|man-db|polkit-1)|/var/cache|/etc/ld\.so\.cache|"
                   r"/run/(lock|user|systemd|dpengine-e2e)|/etc/(passwd|group|shadow|gshadow|subuid|subgid)-?$|"
                   r"/etc/\.pwd\.lock|/etc/netns|/var/lib/dbus)")
ENABLE_LINK = "/etc/systemd/system/multi-user.target.wants/dpengined.service"

# Expected leftovers after purge: the account tools' backups and lock (the user and group
# themselves are lines in /etc/passwd and /etc/group).
LEFTOVERS = re.compile(r"^/etc/(passwd|group|shadow|gshadow|subuid|subgid)-$")


def installed() -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "dpengine"], capture_output=True, text=True)
    return out.returncode == 0 and "installed" in out.stdout and "not-installed" not in out.stdout


def known(lookup, name: str) -> bool:
    try:
        lookup(name)
        return True
    except KeyError:
        return False


def snapshot() -> set[str]:
    paths: set[str] = set()
    for top in WATCHED:
        for root, dirs, files in os.walk(top):
            if NOISE.match(root):
                dirs[:] = []
                continue
            for name in dirs + files:
                path = os.path.join(root, name)
                if not NOISE.match(path):
                    paths.add(path)
    return paths


def build_deb(out: str) -> str | None:
    # One cpack at a time per build directory: test_packaging.py builds there too.
    with open(os.path.join(BUILD, ".dpengine-cpack.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = run(["cpack", "--config", os.path.join(BUILD, "CPackConfig.cmake"), "-G", "DEB", "-B", out],
                  timeout=200, cwd=BUILD)
    debs = glob.glob(os.path.join(out, "dpengine_*.deb"))
    check(res.returncode == 0 and len(debs) == 1, "cpack -G DEB", (res.stdout + res.stderr)[-2000:])
    return debs[0] if debs else None


def check_installed() -> None:
    print("== installed", flush=True)
    for path in ("/usr/sbin/dpengined", "/usr/bin/dpctl", "/usr/libexec/dpengine/dpengine-rank",
                 "/usr/lib/systemd/system/dpengined.service", "/etc/dpengine/dpengined.toml"):
        check(os.path.exists(path), f"{path} installed")
    out = run(["/usr/sbin/dpengined", "--check-config"], timeout=30)
    check(out.returncode == 0 and not out.stderr and "[engine]" in out.stdout,
          "dpengined --check-config accepts the shipped /etc/dpengine/dpengined.toml", out.stderr)
    out = run(["dpctl", "--version"], timeout=30)
    check(out.returncode == 0 and out.stdout.startswith("dpctl "), "dpctl --version", out.stdout + out.stderr)
    if shutil.which("man"):
        for section, page, words in (("8", "dpengined", "the dpengine node daemon"),
                                     ("5", "dpengined.toml", "configuration of the dpengine node daemon"),
                                     ("1", "dpctl", "control the dpengine node daemon"),
                                     ("7", "dpengine-protocol", "wire protocol")):
            out = run(["man", section, page], timeout=30, env=dict(os.environ, MANPAGER="cat", PAGER="cat",
                                                                     MANWIDTH="100"))
            check(out.returncode == 0 and words in out.stdout, f"man {section} {page} opens", out.stderr[-500:])
    else:
        print("  note: man(1) is missing; pages not opened", flush=True)
    if shutil.which("systemd-analyze"):
        out = run(["systemd-analyze", "verify", "/usr/lib/systemd/system/dpengined.service"], timeout=60)
        check(out.returncode == 0 and not (out.stdout + out.stderr).strip(),
              "systemd-analyze verify on the installed unit (binaries, man pages, user)", out.stdout + out.stderr)
    check(known(pwd.getpwnam, "dpengine") and known(grp.getgrnam, "dpengine"), "user and group dpengine exist")
    if known(grp.getgrnam, "dpengine"):
        st = os.stat("/etc/dpengine/keys") if os.path.isdir("/etc/dpengine/keys") else None
        check(st is not None and stat.S_IMODE(st.st_mode) == 0o750 and st.st_uid == 0
              and st.st_gid == grp.getgrnam("dpengine").gr_gid, "/etc/dpengine/keys is root:dpengine 0750")


def unit_setting(name: str) -> str:
    with open("/usr/lib/systemd/system/dpengined.service", encoding="utf-8") as f:
        values = re.findall(rf"^{name}=(.*)$", f.read(), re.M)
    return values[-1].strip() if values else ""


def start_bus(tmp: str) -> tuple[subprocess.Popen | None, str]:
    """A private system bus with the installed policy, as the daemon's and dpctl's bus."""
    if not shutil.which("dbus-daemon"):
        return None, ""
    conf = os.path.join(tmp, "bus.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(bus_config(os.path.join(tmp, "bus"), "/usr/share/dbus-1/system.d/org.dpengine1.conf"))
    bus = subprocess.Popen(["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={conf}", "--print-address=1"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    address = bus.stdout.readline().strip()
    return bus, address


def dpctl_as(user: str, address: str, *args: str) -> subprocess.CompletedProcess:
    return run(["setpriv", f"--reuid={user}", f"--regid={pwd.getpwnam(user).pw_gid}", "--init-groups", "--",
                "env", "-i", f"DBUS_SYSTEM_BUS_ADDRESS={address}", "/usr/bin/dpctl", *args], timeout=60)


def check_bus_control(address: str) -> None:
    """Everyone may read; only root and members of group dpengine may change ranks, with the
    daemon sandboxed as the unit says."""
    operator = "dpengine-e2e-op"
    subprocess.run(["useradd", "-M", "-N", "-g", "nogroup", "-G", "dpengine", "-s", "/usr/sbin/nologin", operator],
                   capture_output=True, timeout=30)
    try:
        if not check(known(pwd.getpwnam, operator), f"a user {operator} in group dpengine (for the test)"):
            return
        out = dpctl_as("nobody", address, "ranks", "--no-legend")
        check(out.returncode == 0 and len(out.stdout.splitlines()) == 2, "dpctl ranks works for everyone (nobody)",
              out.stdout + out.stderr)
        out = dpctl_as("nobody", address, "drain", "1")
        check(out.returncode == 4, "dpctl drain is denied (exit 4) to a user outside group dpengine",
              (out.returncode, out.stderr))
        out = dpctl_as(operator, address, "drain", "1", "--timeout", "20")
        check(out.returncode == 0, "a member of group dpengine (a supplementary group) may drain a rank",
              (out.returncode, out.stderr))
        out = dpctl_as(operator, address, "undrain", "1", "--timeout", "20")
        check(out.returncode == 0, "... and undrain it", (out.returncode, out.stderr))
    finally:
        subprocess.run(["userdel", operator], capture_output=True, timeout=30)


def serve_as_service_user(tmp: str) -> None:
    print("== the installed daemon as user dpengine, sandboxed with setpriv", flush=True)
    if not shutil.which("setpriv"):
        print("  skipped: setpriv is missing (util-linux)", flush=True)
        return
    user = pwd.getpwnam("dpengine")
    runtime = tempfile.mkdtemp(prefix="dpengine-e2e-", dir="/run")
    os.chown(runtime, user.pw_uid, user.pw_gid)
    os.chmod(runtime, 0o750)
    os.chmod(tmp, 0o755)
    notify_path = os.path.join(tmp, "notify.sock")
    listener = NotifyListener(notify_path)
    os.chmod(notify_path, 0o777)
    port = free_port()
    log_path = os.path.join(tmp, "daemon.log")
    bus, address = start_bus(tmp)
    cmd = ["setpriv", "--reuid=dpengine", "--regid=dpengine", "--init-groups", "--no-new-privs",
           "--bounding-set=-all", "--inh-caps=-all", "--",
           "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"RUNTIME_DIRECTORY={runtime}",
           f"NOTIFY_SOCKET={notify_path}", "WATCHDOG_USEC=2000000", f"DBUS_SYSTEM_BUS_ADDRESS={address or 'none'}",
           "sh", "-c", 'umask 0027; exec "$@"', "sh",
           "/usr/sbin/dpengined", "-dp", "2", "--host", "127.0.0.1", "--port", str(port)]
    # The unit's ProtectProc= (hidepid= of a private /proc), which decides what the daemon can
    # learn about the processes that call it.
    hidepid = unit_setting("ProtectProc")
    if hidepid in ("invisible", "noaccess", "ptraceable") and shutil.which("unshare"):
        print(f"  ProtectProc={hidepid}: the daemon gets a /proc mounted with hidepid={hidepid}", flush=True)
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount -t proc -o hidepid={hidepid} proc /proc && exec "$@"', "sh", *cmd]
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready = listener.wait_for(lambda m: m == "READY=1", 30, give_up=lambda: daemon.poll() is not None)
        check(ready is not None, "READY=1 from the installed daemon", open(log_path).read()[-2000:])
        if ready:
            st = os.stat(os.path.join(runtime, "rpc.sock")) if os.path.exists(os.path.join(runtime, "rpc.sock")) else None
            check(st is not None and st.st_uid == user.pw_uid, "its rank socket in $RUNTIME_DIRECTORY belongs to dpengine")
            check(listener.wait_for(lambda m: m == "WATCHDOG=1", 5) is not None, "WATCHDOG=1 sent")
            prompt, seed, n = "packaged and installed", 11, 6
            status, body = post_json(port, "/v1/completions",
                                     {"model": "synthetic", "prompt": prompt, "max_tokens": n, "seed": seed})
            text = body.get("choices", [{}])[0].get("text") if isinstance(body, dict) else None
            check(status == 200 and text == synthetic_text(prompt, seed, n),
                  "a completion from the installed daemon matches the synthetic backend", (status, body))
            for pid_dir in glob.glob("/proc/[0-9]*"):
                try:
                    with open(os.path.join(pid_dir, "cmdline"), "rb") as f:
                        argv = f.read().split(b"\0")
                    if argv and argv[0] == b"/usr/libexec/dpengine/dpengine-rank" and \
                            os.stat(pid_dir).st_uid == user.pw_uid:
                        break
                except OSError:
                    continue
            else:
                check(False, "the ranks run /usr/libexec/dpengine/dpengine-rank as dpengine")
            if address:
                check_bus_control(address)
            else:
                print("  note: dbus-daemon is missing; dpctl over D-Bus not checked", flush=True)
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            rc = None
        check(rc == 0, "SIGTERM stops it with status 0", open(log_path).read()[-2000:])
        check(listener.wait_for(lambda m: m == "STOPPING=1", 1) is not None, "STOPPING=1 sent")
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        listener.close()
        shutil.rmtree(runtime, ignore_errors=True)
        if bus is not None:
            bus.terminate()
            try:
                bus.wait(timeout=10)
            except subprocess.TimeoutExpired:
                bus.kill()
                bus.wait()


def main() -> int:
    if os.geteuid() != 0:
        print("skipped: not root (installs a package)")
        return 0
    if (cache_value("DPENGINE_SANITIZE") or "").upper() in ("ON", "1", "TRUE", "YES"):
        print("skipped: sanitizer build; the package is installed and tested from the plain build")
        return 0
    if cache_value("CMAKE_INSTALL_PREFIX") != "/usr":
        print(f"skipped: {BUILD} is configured with CMAKE_INSTALL_PREFIX={cache_value('CMAKE_INSTALL_PREFIX')}; "
              "packages need /usr (the default of a fresh build directory)")
        return 0
    for tool in ("apt-get", "dpkg", "cpack"):
        if not shutil.which(tool):
            print(f"skipped: {tool} is missing")
            return 0
    if installed() or os.path.exists("/etc/dpengine") or os.path.exists("/var/lib/dpengine"):
        print("skipped: dpengine is installed here (or left its files): this test does not touch a real installation")
        return 0
    user_existed = known(pwd.getpwnam, "dpengine")
    group_existed = known(grp.getgrnam, "dpengine")

    with tempfile.TemporaryDirectory(prefix="dpengine-install-") as tmp:
        deb = build_deb(os.path.join(tmp, "out"))
        if not deb:
            return 1
        before = snapshot()
        we_installed = False
        try:
            print("== apt-get install ./" + os.path.basename(deb), flush=True)
            out = run(["apt-get", "install", "-y", "-q", "--no-install-recommends", deb], timeout=180, env=APT_ENV)
            we_installed = installed()
            if not check(out.returncode == 0 and we_installed, "apt-get install", (out.stdout + out.stderr)[-3000:]):
                return 1
            check_installed()
            serve_as_service_user(tmp)

            print("== apt-get remove: configuration and keys stay, the service is disabled", flush=True)
            out = run(["systemctl", "enable", "dpengined.service"], timeout=30)
            check(out.returncode == 0 and os.path.lexists(ENABLE_LINK), "systemctl enable dpengined",
                  (out.stdout + out.stderr)[-1000:])
            with open("/etc/dpengine/keys/node.key", "w") as f:
                f.write("stand-in for a key\n")
            with open("/etc/dpengine/dpengined.toml", "a") as f:
                f.write("# changed by the operator\n")
            out = run(["apt-get", "remove", "-y", "-q", "dpengine"], timeout=120, env=APT_ENV)
            check(out.returncode == 0, "apt-get remove", (out.stdout + out.stderr)[-2000:])
            check(not os.path.exists("/usr/sbin/dpengined"), "the programs are gone")
            check(not os.path.lexists(ENABLE_LINK), "no enable symlink is left to a unit that is gone",
                  os.path.lexists(ENABLE_LINK) and os.readlink(ENABLE_LINK))
            check(os.path.exists("/etc/dpengine/keys/node.key"), "the keys stay")
            check("# changed by the operator" in open("/etc/dpengine/dpengined.toml").read()
                  if os.path.exists("/etc/dpengine/dpengined.toml") else False, "the changed configuration stays")

            print("== apt-get purge: nothing but the expected leftovers", flush=True)
            out = run(["apt-get", "purge", "-y", "-q", "dpengine"], timeout=120, env=APT_ENV)
            we_installed = installed()
            check(out.returncode == 0 and not we_installed, "apt-get purge", (out.stdout + out.stderr)[-2000:])
            for path in ("/etc/dpengine", "/var/lib/dpengine", "/usr/libexec/dpengine", "/run/dpengine"):
                check(not os.path.exists(path), f"{path} is gone")
            after = snapshot()
            added = sorted(p for p in after - before if not LEFTOVERS.match(p))
            removed = sorted(before - after)
            check(not added, "no files are left behind", added)
            check(not removed, "no files of others were removed", removed)
            check(known(pwd.getpwnam, "dpengine") and known(grp.getgrnam, "dpengine"),
                  "the user and group dpengine stay (Debian keeps system users)")
        finally:
            if we_installed or installed():
                subprocess.run(["apt-get", "purge", "-y", "-q", "dpengine"], capture_output=True, env=APT_ENV,
                               timeout=120)
            for path in ("/etc/dpengine", "/var/lib/dpengine"):
                shutil.rmtree(path, ignore_errors=True)
            if not user_existed and known(pwd.getpwnam, "dpengine"):
                subprocess.run(["userdel", "dpengine"], capture_output=True, timeout=30)
            if not group_existed and known(grp.getgrnam, "dpengine"):
                subprocess.run(["groupdel", "dpengine"], capture_output=True, timeout=30)

    return verdict()


if __name__ == "__main__":
    sys.exit(main())
