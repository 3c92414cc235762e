"""The systemd unit and the other system files (D-Bus policy, polkit, sysusers.d, tmpfiles.d).

- `systemd-analyze security --offline=true units/dpengined.service`: exposure at most 2.0.
- `systemd-analyze verify` on a copy whose ExecStart= points at the build tree, with the
  rendered man pages on MANPATH so that Documentation= is checked too.
- The directives the daemon relies on (Type=notify, NotifyAccess=main, watchdog, restart
  policy excluding the non-retryable exit codes of daemon/core/exit_codes.hpp, KillMode=mixed,
  stop/start timeouts longer than the config's stop_timeout/ready_timeout defaults, the
  directories, GPU devices reachable: DevicePolicy=closed, no PrivateDevices=, no
  MemoryDenyWriteExecute=yes).
- The D-Bus policy loads in a real dbus-daemon; root may own org.dpengine1, nobody may not.
- polkit actions: well-formed, one per mutating method group, each owned by the unit's User=.
- sysusers.d + tmpfiles.d applied to a scratch root: user/group dpengine, keys dir 0750.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

from checklist import BUILD, SRC, check, default_config, int_constants, run, run_parts, set_deadline
from busharness import bus_config

set_deadline(120)

UNIT = os.path.join(SRC, "units", "dpengined.service")
MAX_EXPOSURE = 2.0


def unit_settings(path: str) -> dict[str, list[str]]:
    """Directive -> values (in order), across sections; comments and blank lines skipped."""
    settings: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;" or line.startswith("["):
                continue
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def seconds(value: str) -> float:
    """systemd time span ("60s", "11min", "1h 30s", "90") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001, "us": 1e-6}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def test_security_score() -> None:
    print("== systemd-analyze security --offline=true", flush=True)
    out = run(["systemd-analyze", "security", "--offline=true", "--no-pager", UNIT])
    m = re.search(r"Overall exposure level for dpengined\.service: (\d+(?:\.\d+)?)", out.stdout)
    check(m is not None, "systemd-analyze security printed an overall exposure", out.stdout[-2000:] + out.stderr)
    if m:
        score = float(m[1])
        print(f"  exposure: {score}", flush=True)
        check(score <= MAX_EXPOSURE, f"exposure {score} <= {MAX_EXPOSURE}",
              "\n".join(l for l in out.stdout.splitlines() if l.startswith("✗")))


def test_verify() -> None:
    print("== systemd-analyze verify", flush=True)
    exe = os.path.join(BUILD, "daemon", "dpengined")
    if not os.access(exe, os.X_OK):
        check(False, f"{exe} exists (build first)")
        return
    with tempfile.TemporaryDirectory(prefix="dpengine-units-") as tmp:
        with open(UNIT, encoding="utf-8") as f:
            text = f.read()
        check("ExecStart=/usr/sbin/dpengined" in text, "ExecStart= runs the installed /usr/sbin/dpengined")
        check("ExecReload=/usr/bin/dpctl " in text, "ExecReload= runs the installed /usr/bin/dpctl")
        copy = os.path.join(tmp, "dpengined.service")
        with open(copy, "w", encoding="utf-8") as f:
            f.write(text.replace("ExecStart=/usr/sbin/dpengined", f"ExecStart={exe}")
                    .replace("ExecReload=/usr/bin/dpctl ", f"ExecReload={os.path.join(BUILD, 'ctl', 'dpctl')} "))
        env = dict(os.environ)
        mandir = os.path.join(BUILD, "man")
        pages = [p for p in os.listdir(mandir) if re.match(r".*\.\d$", p)] if os.path.isdir(mandir) else []
        man_args = ["--man=no"]
        if pages and shutil.which("man"):
            # Documentation=man:... is checked against the pages just built.
            for page in pages:
                section_dir = os.path.join(tmp, "man", "man" + page[-1])
                os.makedirs(section_dir, exist_ok=True)
                os.symlink(os.path.join(mandir, page), os.path.join(section_dir, page))
            env["MANPATH"] = os.path.join(tmp, "man")
            man_args = []
        else:
            print("  note: rendered man pages or man(1) missing; Documentation= not checked", flush=True)
        out = run(["systemd-analyze", "verify", *man_args, copy], env=env)
        text_out = (out.stdout + out.stderr).strip()
        check(out.returncode == 0 and not text_out, "systemd-analyze verify: no complaints", text_out)


def test_directives() -> None:
    print("== unit directives", flush=True)
    s = unit_settings(UNIT)
    one = lambda k: s.get(k, [""])[-1]
    check(one("Type") == "notify", "Type=notify")
    check(one("NotifyAccess") == "main", "NotifyAccess=main (ranks cannot send READY=1)")
    check(seconds(one("WatchdogSec")) > 0, "WatchdogSec= set")
    check(one("Restart") == "on-failure", "Restart=on-failure")
    check(seconds(one("StartLimitIntervalSec")) > 0 and int(one("StartLimitBurst") or 0) > 0, "start limit set")
    codes = int_constants("daemon/core/exit_codes.hpp")
    prevent = set(" ".join(s.get("RestartPreventExitStatus", [])).split())
    for name in ("config", "refused"):
        check(str(codes[name]) in prevent, f"RestartPreventExitStatus= has {name} = {codes[name]}")
    check(str(codes["failure"]) not in prevent, "exit status 1 (failure) is still restarted")
    check(one("KillMode") == "mixed", "KillMode=mixed")
    defaults = default_config()
    stop = float(defaults.get("daemon.stop_timeout", "nan"))
    ready = float(defaults.get("handshake.ready_timeout", "nan"))
    # drain (stop_timeout) + ranks' SIGTERM grace (5 s, daemon/node/manager.cpp) + margin
    check(seconds(one("TimeoutStopSec")) >= stop + 5 + 5,
          f"TimeoutStopSec={one('TimeoutStopSec')} covers daemon.stop_timeout {stop} + 5 s rank grace + margin")
    check(seconds(one("TimeoutStartSec")) > ready,
          f"TimeoutStartSec={one('TimeoutStartSec')} is longer than handshake.ready_timeout {ready}")
    check(one("User") == "dpengine" and one("Group") == "dpengine", "User=/Group=dpengine")
    for key in ("RuntimeDirectory", "ConfigurationDirectory", "StateDirectory"):
        check(one(key) == "dpengine", f"{key}=dpengine")
    # A reload that returns once the daemon answered, non-zero when it refused the file (a
    # SIGHUP would return at once, 0 whatever the daemon makes of it).
    check(one("ExecReload") == "/usr/bin/dpctl reload", "ExecReload= runs dpctl reload (synchronous, truthful)")
    check(one("User") and not one("ExecReload").startswith(("+", "!")),
          "ExecReload= runs as the service's user, sandboxed (the daemon obeys its own user)")
    docs = " ".join(s.get("Documentation", [])).split()
    for page in ("man:dpengined(8)", "man:dpengined.toml(5)", "man:dpctl(1)"):
        check(page in docs, f"Documentation= lists {page}")
    check(one("DevicePolicy") == "closed", "DevicePolicy=closed")
    allowed = " ".join(s.get("DeviceAllow", []))
    for dev in ("char-nvidia-frontend", "char-nvidia-uvm", "/dev/nvidiactl"):
        check(dev in allowed, f"DeviceAllow= lets the service reach {dev}")
    check(one("PrivateDevices") in ("", "no", "false"), "no PrivateDevices= (it would hide the GPUs)")
    check(one("MemoryDenyWriteExecute") in ("", "no", "false"), "no MemoryDenyWriteExecute= (CUDA JIT needs W+X)")
    families = set(" ".join(s.get("RestrictAddressFamilies", [])).split())
    check({"AF_UNIX", "AF_INET", "AF_INET6"} <= families, "AF_UNIX, AF_INET, AF_INET6 allowed")


def test_dbus_policy() -> None:
    print("== D-Bus policy", flush=True)
    policy = os.path.join(SRC, "etc", "dbus-1", "org.dpengine1.conf")
    root = ET.parse(policy).getroot()
    check(root.tag == "busconfig", "org.dpengine1.conf is a busconfig document")
    for rule in root.iter():
        if rule.tag in ("allow", "deny") and any(k.startswith("send_") for k in rule.attrib):
            check(rule.get("send_destination") == "org.dpengine1",
                  f"<{rule.tag} {rule.attrib}> is limited to send_destination=org.dpengine1")
    # Everyone may call only read-only methods: compare with the interface the daemon exports.
    exe = os.path.join(BUILD, "daemon", "dpengined")
    public = {(r.get("send_interface"), r.get("send_member")) for p in root.findall("policy")
              if p.get("context") == "default" for r in p.findall("allow") if r.get("send_member")}
    intro = run([exe, "--bus-introspect"]) if os.access(exe, os.X_OK) else None
    if intro is not None and intro.returncode == 0 and intro.stdout.lstrip().startswith("<"):
        node = ET.fromstring(intro.stdout)
        methods = {(i.get("name"), m.get("name")) for i in node.iter("interface") for m in i.findall("method")}
        for iface, member in sorted(methods):
            if (iface, member) in public:
                check(re.match(r"^(List|Get)", member) is not None,
                      f"{iface}.{member}, open to everyone, only reads (List*/Get*)")
        for iface, member in sorted(public):
            if iface.startswith("org.dpengine1") and (iface, member) not in methods:
                print(f"  note: {iface}.{member} is allowed by the policy but not exported yet (provisional)",
                      flush=True)
        mutating = sorted(f"{i}.{m}" for i, m in methods if not re.match(r"^(List|Get)", m))
        check(all((i, m) not in public for i, m in methods if not re.match(r"^(List|Get)", m)),
              f"no mutating method is open to everyone ({len(mutating)} exported)", mutating)
    else:
        print("  note: dpengined --bus-introspect unavailable; policy not compared with the interface", flush=True)
    if not shutil.which("dbus-daemon") or not shutil.which("busctl"):
        print("  skipped (dbus-daemon or busctl missing): loading the policy into a bus", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="dpengine-dbus-") as tmp:
        os.chmod(tmp, 0o755)
        sock = os.path.join(tmp, "bus")
        conf = os.path.join(tmp, "bus.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(bus_config(sock, policy))
        bus = subprocess.Popen(["dbus-daemon", "--nofork", "--nopidfile", f"--config-file={conf}", "--print-address=1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            address = bus.stdout.readline().strip()
            check(address.startswith("unix:"), "dbus-daemon started with the policy", address)
            if not address:
                return
            own = ["busctl", f"--address={address}", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                   "org.freedesktop.DBus", "RequestName", "su", "org.dpengine1", "0"]
            if os.geteuid() == 0:
                out = run(own)
                check(out.returncode == 0 and out.stdout.strip() == "u 1", "root may own org.dpengine1",
                      out.stdout + out.stderr)
                if shutil.which("setpriv"):
                    out = run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *own])
                    check(out.returncode != 0 and "denied" in (out.stdout + out.stderr).lower(),
                          "user nobody may not own org.dpengine1", out.stdout + out.stderr)
            else:
                print("  note: not root; ownership by root/nobody not checked", flush=True)
        finally:
            bus.terminate()
            try:
                _, err = bus.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                bus.kill()
                _, err = bus.communicate()
            # Not complaints about the policy: the user and group dpengine need not exist here,
            # and an unprivileged container may not raise the bus's descriptor limit.
            harmless = ("Unknown username", "Unknown group", "Failed to set fd limit")
            problems = [l for l in err.splitlines() if l.strip() and not any(h in l for h in harmless)]
            check(not problems, "dbus-daemon had no complaints about the policy (unknown user/group aside)", err)


def test_polkit() -> None:
    print("== polkit actions", flush=True)
    path = os.path.join(SRC, "etc", "polkit-1", "org.dpengine1.policy")
    root = ET.parse(path).getroot()
    service_user = unit_settings(UNIT).get("User", [""])[-1]
    ids = {a.get("id") for a in root.findall("action")}
    expected = {"org.dpengine1.manage-ranks", "org.dpengine1.assign", "org.dpengine1.reload",
                "org.dpengine1.manage-node"}
    check(ids == expected, f"polkit actions are {sorted(expected)}", sorted(ids))
    for action in root.findall("action"):
        d = action.find("defaults")
        check(d is not None and all(d.findtext(k) for k in ("allow_any", "allow_inactive", "allow_active")),
              f"{action.get('id')} has all three defaults")
        check(bool(action.findtext("description")) and bool(action.findtext("message")),
              f"{action.get('id')} has a description and a message")
        # polkitd answers the daemon about its callers only for actions it owns
        # (test_dpctl_polkit shows it with the real polkitd).
        owners = [a.text for a in action.findall("annotate") if a.get("key") == "org.freedesktop.policykit.owner"]
        check(owners == [f"unix-user:{service_user}"],
              f"{action.get('id')} names the unit's User={service_user} as its owner", owners)


def test_sysusers_tmpfiles() -> None:
    print("== sysusers.d and tmpfiles.d in a scratch root", flush=True)
    if not shutil.which("systemd-sysusers") or not shutil.which("systemd-tmpfiles"):
        print("  skipped: systemd-sysusers or systemd-tmpfiles missing", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="dpengine-root-") as root:
        os.makedirs(os.path.join(root, "etc"))
        out = run(["systemd-sysusers", f"--root={root}", os.path.join(SRC, "packaging", "dpengine.sysusers")])
        check(out.returncode == 0, "systemd-sysusers accepts packaging/dpengine.sysusers", out.stderr)
        passwd = open(os.path.join(root, "etc", "passwd"), encoding="utf-8").read()
        group = open(os.path.join(root, "etc", "group"), encoding="utf-8").read()
        user = re.search(r"^dpengine:[^:]*:(\d+):(\d+):[^:]*:([^:]*):([^:\n]*)$", passwd, re.M)
        grp = re.search(r"^dpengine:[^:]*:(\d+):", group, re.M)
        check(user is not None and grp is not None, "user and group dpengine created", passwd + group)
        if user and grp:
            check(user[2] == grp[1], "the user's primary group is dpengine")
            check(int(user[1]) < 1000, "dpengine is a system user (uid below 1000)", user[1])
            check(user[3] == "/var/lib/dpengine" and user[4].endswith("nologin"), "home /var/lib/dpengine, no login shell")
        if os.geteuid() != 0:
            print("  skipped (not root): tmpfiles.d ownership", flush=True)
            return
        out = run(["systemd-tmpfiles", f"--root={root}", "--create", os.path.join(SRC, "packaging", "dpengine.tmpfiles")])
        check(out.returncode == 0, "systemd-tmpfiles accepts packaging/dpengine.tmpfiles", out.stderr)
        keys = os.path.join(root, "etc", "dpengine", "keys")
        if os.path.isdir(keys) and grp:
            st = os.stat(keys)
            check(st.st_mode & 0o7777 == 0o750 and st.st_uid == 0 and str(st.st_gid) == grp[1],
                  "/etc/dpengine/keys is root:dpengine 0750", oct(st.st_mode))
        else:
            check(False, "/etc/dpengine/keys created")
        check(os.path.isdir(os.path.join(root, "etc", "dpengine", "dpengined.toml.d")), "/etc/dpengine/dpengined.toml.d created")


def main() -> int:
    if not shutil.which("systemd-analyze"):
        print("skipped: systemd-analyze is missing (apt-get install systemd)")
        return 0
    return run_parts([test_security_score, test_verify, test_directives, test_dbus_policy, test_polkit, test_sysusers_tmpfiles])


if __name__ == "__main__":
    sys.exit(main())
