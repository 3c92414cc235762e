"""D-Bus pieces for dpengine's integration tests (stdlib only; builds on harness.py).

  - SystemBus:  a private dbus-daemon of type "system" on a unix socket in a temp directory
                (EXTERNAL auth), with the essentials of the real system bus's default policy
                (/usr/share/dbus-1/system.conf: anyone may connect, nobody may own names or
                call methods unless a policy file punches a hole) and the repository's policy
                file etc/dbus-1/org.dpengine1.conf included, so the tests exercise the policy
                that ships. `.env` holds DBUS_SYSTEM_BUS_ADDRESS for the daemon and dpctl.
                stop()/start() restart it at the same address (a bus restart).
  - dpctl():    runs the built dpctl (optionally as another user, via setpriv) with the bus
                address; returns harness.Completed.
  - Monitor:    `busctl monitor --json=short` in the background, parsed into messages.
  - busctl():   runs busctl against the private bus.
  - helpers:    bus_has_name(), wait_for_name(), introspection_members() (method and property
                signatures of an interface, from introspection XML).
  - users:      group_member() (a user in group dpengine), service_user() (the user dpengine
                the unit runs the daemon as).
  - Polkitd:    the real polkitd on a private bus, in a private mount namespace that shows it
                the shipped dpengine actions and rules (and an administrator's, if given).

Every process started here is killed by the context managers and by harness.kill_everything()
(they are registered with the harness's process registry).
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from typing import Optional

import harness
from harness import (Completed, TestFailure, build_dir, communicate_within, log, slow_factor,
                     stop_process_group, tail, wait_until)

SOURCE_DIR = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
POLICY_FILE = os.path.join(SOURCE_DIR, "etc", "dbus-1", "org.dpengine1.conf")
SERVICE = "org.dpengine1"
MANAGER_PATH = "/org/dpengine1"
MANAGER_INTERFACE = "org.dpengine1.Manager"
RANK_INTERFACE = "org.dpengine1.Rank"
NOBODY = 65534
# What dpctl says to a caller outside group dpengine who asks for a change (exit status 4).
DENIED_TO_OTHERS = "access denied: changing dpengine needs root or membership of the group 'dpengine'"


def dpctl_path() -> str:
    return os.path.join(build_dir(), "ctl", "dpctl")


def _register(proc: subprocess.Popen) -> None:
    with harness._registry_lock:
        harness._live_procs.add(proc)


def _unregister(proc: subprocess.Popen) -> None:
    with harness._registry_lock:
        harness._live_procs.discard(proc)


def bus_config(socket_path: str, policy_file: str = POLICY_FILE, extra_policy: str = "") -> str:
    """The configuration of a private system bus: the defaults of the real one, our policy, and
    `extra_policy` (<policy> elements, e.g. for a stand-in of another system service)."""
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket_path}</listen>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Debug.Stats"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
  <include>{policy_file}</include>
  {extra_policy}
</busconfig>
"""


class SystemBus:
    """A private system bus. `with SystemBus() as bus:`; `bus.env` for the processes that
    should use it. With `socket_path`, listens there (the directory must exist); else in a new
    temp directory. start=False in the constructor: only the address is chosen (a bus that is
    not up yet). policy_file: included instead of the shipped policy; extra_policy: added."""

    def __init__(self, socket_path: Optional[str] = None, start: bool = True, policy_file: str = POLICY_FILE,
                 extra_policy: str = ""):
        self.tmp = tempfile.mkdtemp(prefix="dpe-bus-")
        os.chmod(self.tmp, 0o755)  # unprivileged clients (nobody) reach the socket
        self.socket_path = socket_path or os.path.join(self.tmp, "system_bus_socket")
        self.address = f"unix:path={self.socket_path}"
        self.config_path = os.path.join(self.tmp, "system.conf")
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(bus_config(self.socket_path, policy_file, extra_policy))
        self.log_path = os.path.join(self.tmp, "dbus-daemon.log")
        self.proc: Optional[subprocess.Popen] = None
        self._autostart = start

    @property
    def env(self) -> dict:
        return {"DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def start(self, timeout: float = 10.0) -> "SystemBus":
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        logf = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={self.config_path}",
                                          "--print-address=1"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=logf, start_new_session=True)
        finally:
            logf.close()
        _register(self.proc)
        # It prints its address once it listens.
        line = b""
        deadline = time.monotonic() + timeout * slow_factor()
        os.set_blocking(self.proc.stdout.fileno(), False)
        while not line.endswith(b"\n") and time.monotonic() < deadline and self.proc.poll() is None:
            chunk = self.proc.stdout.read()
            if chunk:
                line += chunk
            else:
                time.sleep(0.02)
        if not line.endswith(b"\n"):
            self.stop()
            raise TestFailure(f"dbus-daemon did not start; log:\n{tail(self.log_text())}")
        os.chmod(self.socket_path, 0o666)
        log(f"[dbus] private system bus pid {self.proc.pid} at {self.address}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc, sig, 10)
        if self.proc.stdout:
            self.proc.stdout.close()
        _unregister(self.proc)
        log(f"[dbus] stopped pid {self.proc.pid}")
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return harness.file_text(self.log_path)

    def __enter__(self) -> "SystemBus":
        if self._autostart:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if os.environ.get("DPENGINE_TEST_KEEP"):
            log(f"[dbus] kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Running clients


def run(argv: list[str], env: Optional[dict] = None, timeout: float = 30.0, user: Optional[int] = None,
        input_text: Optional[str] = None) -> Completed:
    """Runs a program to completion with `env` added to ours; as uid `user` with its groups
    when given. Killed with its group after `timeout` (TestFailure)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    if user is not None:
        # The user's groups from the user database, as a login would have them (the bus policy
        # looks at the connection's groups).
        try:
            account = pwd.getpwuid(user)
            ids = [f"--reuid={user}", f"--regid={account.pw_gid}", "--init-groups"]
        except KeyError:
            ids = [f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        argv = ["setpriv", *ids, "--", *argv]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env, start_new_session=True)
    _register(proc)
    try:
        out, err = communicate_within(proc, timeout, " ".join(argv),
                                      input_text.encode() if input_text is not None else None)
    finally:
        _unregister(proc)
    return Completed(proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                     time.monotonic() - start)


def dpctl(bus: Optional[SystemBus], *args: str, user: Optional[int] = None, timeout: float = 60.0,
          env: Optional[dict] = None) -> Completed:
    """Runs dpctl against `bus` (None: leave DBUS_SYSTEM_BUS_ADDRESS as the caller's env says)."""
    e = dict(bus.env) if bus else {}
    e.update(env or {})
    r = run([dpctl_path(), *args], env=e, timeout=timeout, user=user)
    who = "" if user is None else f" (uid {user})"
    log(f"  $ dpctl {' '.join(args)}{who} -> {r.returncode}"
        + (f"; stderr: {r.stderr.strip()}" if r.stderr.strip() else ""))
    return r


def busctl(bus: SystemBus, *args: str, timeout: float = 30.0) -> Completed:
    return run(["busctl", "--system", *args], env=bus.env, timeout=timeout)


def bus_has_name(bus: SystemBus, name: str = SERVICE) -> bool:
    r = busctl(bus, "--no-pager", "--no-legend", "list", "--acquired")
    return r.returncode == 0 and any(line.split()[:1] == [name] for line in r.stdout.splitlines())


def wait_for_name(bus: SystemBus, timeout: float, name: str = SERVICE) -> bool:
    return bool(wait_until(lambda: bus_has_name(bus, name), timeout * slow_factor(), interval=0.2))


# ---------------------------------------------------------------------------------------------
# Watching signals


class Monitor:
    """`busctl monitor --json=short SERVICE` in the background. `.messages()` are the parsed
    JSON objects seen so far (type, path, interface, member, payload, ...)."""

    def __init__(self, bus: SystemBus, service: str = SERVICE):
        self.bus = bus
        self.service = service
        self.proc: Optional[subprocess.Popen] = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Monitor":
        env = dict(os.environ)
        env.update(self.bus.env)
        self.proc = subprocess.Popen(["busctl", "--system", "monitor", "--json=short", self.service],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        _register(self.proc)
        self._thread = threading.Thread(target=self._read, name="bus-monitor", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc and self.proc.stdout
        for raw in self.proc.stdout:
            with self._lock:
                self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def messages(self) -> list[dict]:
        out = []
        for line in self.lines():
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if isinstance(m, dict):
                out.append(m)
        return out

    def sync(self, timeout: float = 10.0) -> None:
        """Returns once the monitor sees traffic to the service (it is then surely listening)."""
        def seen() -> bool:
            busctl(self.bus, "get-property", SERVICE, MANAGER_PATH, MANAGER_INTERFACE, "Version")
            return any(m.get("destination") == SERVICE or m.get("sender") == SERVICE for m in self.messages()) \
                or any(m.get("member") == "Get" for m in self.messages())
        if not wait_until(seen, timeout * slow_factor(), interval=0.2):
            raise TestFailure(f"busctl monitor saw nothing within {timeout} s; output:\n{tail(chr(10).join(self.lines()))}")

    def mark(self) -> int:
        """A position in the message stream, for property_changes(since=...)."""
        return len(self.messages())

    def property_changes(self, path: str, interface: str = RANK_INTERFACE, since: int = 0) -> list[dict]:
        """The changed-property dictionaries of PropertiesChanged signals from `path` (after
        mark `since`), in order, as {name: value}."""
        out = []
        for m in self.messages()[since:]:
            if m.get("type") != "signal" or m.get("member") != "PropertiesChanged" or m.get("path") != path:
                continue
            data = (m.get("payload") or {}).get("data") or []
            if len(data) < 2 or data[0] != interface:
                continue
            out.append({k: (v.get("data") if isinstance(v, dict) else v) for k, v in data[1].items()})
        return out

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc, signal.SIGTERM, 5)
        if self._thread:
            self._thread.join(2)
        _unregister(self.proc)
        self.proc = None

    def __enter__(self) -> "Monitor":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------
# Introspection


def introspection_members(xml_text: str, interface: str) -> dict[str, tuple]:
    """{"method Name": ((in signatures), (out signatures)), "property Name": (type, access),
    "signal Name": (signatures)} of `interface` in introspection XML (annotations and argument
    names are left out: they are not part of the contract checked here)."""
    root = ET.fromstring(xml_text)
    found = None
    for iface in root.iter("interface"):
        if iface.get("name") == interface:
            found = iface
    if found is None:
        raise TestFailure(f"interface {interface} is not in the XML:\n{tail(xml_text)}")
    out: dict[str, tuple] = {}
    for child in found:
        kind, name = child.tag, child.get("name")
        if kind == "method":
            args = child.findall("arg")
            ins = tuple(a.get("type") for a in args if a.get("direction", "in") == "in")
            outs = tuple(a.get("type") for a in args if a.get("direction") == "out")
            out[f"method {name}"] = (ins, outs)
        elif kind == "property":
            out[f"property {name}"] = (child.get("type"), child.get("access"))
        elif kind == "signal":
            out[f"signal {name}"] = tuple(a.get("type") for a in child.findall("arg"))
    return out


def dpctl_json(bus: SystemBus, *args: str, user: Optional[int] = None):
    """`dpctl --json ARGS` (exit 0 required), parsed."""
    r = dpctl(bus, "--json", *args, user=user)
    if r.returncode != 0:
        raise TestFailure(f"dpctl --json {' '.join(args)} exited {r.returncode}: {r.stderr}")
    try:
        return json.loads(r.stdout)
    except ValueError as e:
        raise TestFailure(f"dpctl --json {' '.join(args)} printed no JSON ({e}):\n{tail(r.stdout)}")


def rank_by_number(status_or_ranks) -> dict[int, dict]:
    ranks = status_or_ranks["ranks"] if isinstance(status_or_ranks, dict) else status_or_ranks
    return {r["rank"]: r for r in ranks}


# ---------------------------------------------------------------------------------------------
# A member of the managing group

@contextlib.contextmanager
def group_member(name: str = "dpe-test-operator"):
    """A user `name` whose supplementary group is 'dpengine' (created, with the group if this
    machine has none, and removed again): the daemon looks callers' groups up in the user
    database, so a member must be a real user. Yields its uid. Tests using it share the CTest
    resource lock "system-users" with the package install test, which also creates them.
    Enter it before starting a bus: dbus-daemon resolves group names in its policy at start."""
    created_group = False
    try:
        grp.getgrnam("dpengine")
    except KeyError:
        subprocess.run(["groupadd", "--system", "dpengine"], check=True, capture_output=True, timeout=30)
        created_group = True
    subprocess.run(["userdel", name], capture_output=True, timeout=30)  # left over by a killed run
    subprocess.run(["useradd", "-M", "-N", "-g", "nogroup", "-G", "dpengine", "-s", "/usr/sbin/nologin", name],
                   check=True, capture_output=True, timeout=30)
    try:
        yield pwd.getpwnam(name).pw_uid
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)
        if created_group:
            subprocess.run(["groupdel", "dpengine"], capture_output=True, timeout=30)


@contextlib.contextmanager
def service_user(name: str = "dpengine"):
    """The system user `name` the unit runs the daemon as, in the group of that name (created
    if this machine has neither, and removed again; an existing one is left as it is). Enter
    it after group_member() and before starting a bus (the bus policy names the user)."""
    created_group = created_user = False
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True, timeout=30)
        created_group = True
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "-M", "-g", name, "-d", "/nonexistent", "-s", "/usr/sbin/nologin",
                        name], check=True, capture_output=True, timeout=30)
        created_user = True
    try:
        yield name
    finally:
        if created_user:
            subprocess.run(["userdel", name], capture_output=True, timeout=30)
        if created_group:
            subprocess.run(["groupdel", name], capture_output=True, timeout=30)


# ---------------------------------------------------------------------------------------------
# The real polkitd

POLKITD = "/usr/lib/polkit-1/polkitd"  # Debian's polkitd package
POLKIT_ACTIONS = os.path.join(SOURCE_DIR, "etc", "polkit-1", "org.dpengine1.policy")
POLKIT_RULES = os.path.join(SOURCE_DIR, "etc", "polkit-1", "org.dpengine1.rules")
# polkitd's own bus policy, as its package installs it: user polkitd owns the name, anyone
# may call it. For SystemBus(extra_policy=...).
POLKIT_BUS_POLICY = "<include>/usr/share/dbus-1/system.d/org.freedesktop.PolicyKit1.conf</include>"
# The directories polkitd reads (compiled in; it has no option to name others).
POLKIT_DIRS = ("/usr/share/polkit-1/actions", "/usr/share/polkit-1/rules.d", "/etc/polkit-1/rules.d")


def text_of(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


class Polkitd:
    """Debian's polkitd on a private system bus (started with POLKIT_BUS_POLICY), in a private
    mount namespace where its three directories are bind mounts of temp directories holding
    only the shipped dpengine action file (as /usr/share/polkit-1/actions/), the shipped rules
    (as /usr/share/polkit-1/rules.d/50-org.dpengine1.rules) and `admin_rules` ({file name:
    JavaScript}, as an administrator's /etc/polkit-1/rules.d/): nothing on the host changes and
    the host's own rules play no part. polkitd needs root to start (it then runs as user
    polkitd) and no logind: callers without a session get the actions' allow_any, after the
    rules. `log_text()` is its output, polkit.log() lines of the rules included. `actions`:
    the text of the action file instead of the shipped one."""

    def __init__(self, bus: SystemBus, admin_rules: Optional[dict[str, str]] = None, actions: Optional[str] = None):
        self.bus = bus
        self.tmp = tempfile.mkdtemp(prefix="dpe-polkit-")
        os.chmod(self.tmp, 0o755)  # polkitd reads them as user polkitd
        self.dirs = [os.path.join(self.tmp, d) for d in ("actions", "rules", "admin-rules")]
        files = [{"org.dpengine1.policy": actions if actions is not None else text_of(POLKIT_ACTIONS)},
                 {"50-org.dpengine1.rules": text_of(POLKIT_RULES)},
                 dict(admin_rules or {})]
        for d, content in zip(self.dirs, files):
            os.mkdir(d, 0o755)
            for name, text in content.items():
                with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                    f.write(text)
                os.chmod(os.path.join(d, name), 0o644)
        self.log_path = os.path.join(self.tmp, "polkitd.log")
        self.proc: Optional[subprocess.Popen] = None

    @staticmethod
    def missing() -> Optional[str]:
        """Why polkitd cannot run here, or None."""
        if os.geteuid() != 0:
            return "not root (polkitd and the mount namespace need it)"
        if not os.access(POLKITD, os.X_OK) or not all(os.path.isdir(d) for d in POLKIT_DIRS):
            return f"{POLKITD} is missing: install Debian's package polkitd (scripts/install-deps)"
        if not shutil.which("unshare"):
            return "unshare is missing (util-linux)"
        return None

    def start(self, timeout: float = 20.0) -> "Polkitd":
        why = self.missing()
        if why:
            raise TestFailure(f"cannot run polkitd: {why}")
        mounts = " && ".join(f'mount --bind "${i + 1}" {target}' for i, target in enumerate(POLKIT_DIRS))
        env = dict(os.environ, **self.bus.env)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                          f'{mounts} && exec "$4"', "sh", *self.dirs, POLKITD],
                                         stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        _register(self.proc)
        if not wait_until(lambda: self.proc.poll() is not None or bus_has_name(self.bus, "org.freedesktop.PolicyKit1"),
                          timeout * slow_factor(), interval=0.2) or self.proc.poll() is not None:
            self.stop()
            raise TestFailure(f"polkitd did not come onto the bus; its output:\n{tail(self.log_text())}")
        log(f"[polkitd] pid {self.proc.pid} owns org.freedesktop.PolicyKit1")
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_process_group(self.proc, signal.SIGTERM, 10)
        _unregister(self.proc)
        log(f"[polkitd] stopped pid {self.proc.pid}")
        self.proc = None

    def log_text(self) -> str:
        return harness.file_text(self.log_path)

    def __enter__(self) -> "Polkitd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if os.environ.get("DPENGINE_TEST_KEEP"):
            log(f"[polkitd] kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
