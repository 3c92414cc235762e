"""The .deb and .rpm built by CPack from the build directory's install rules.

Builds both packages with cpack into a temporary directory (the same CPackConfig.cmake that
`cmake --build BUILD --target package` uses), then checks:
- dpkg-deb -c / rpm -qlp list the expected paths and nothing outside the expected places;
- the configuration is a conffile (.deb) / %config(noreplace) (.rpm), the maintainer
  scripts are there and parse, library dependencies are declared;
- man pages are gzipped without name or time stamp; the packaged dpengined looks for its
  rank program under /usr/libexec/dpengine and accepts the packaged configuration;
- lintian (.deb) and rpmlint (.rpm) report no errors and no warnings beyond those with a
  reason in packaging/lintian-overrides / packaging/rpmlint.toml.
Skips (exit 0, printing why) in a sanitizer build, in a build directory configured with
another install prefix than /usr, or where dpkg-deb/cpack are missing; the rpm part is
skipped with a reason when rpmbuild/rpm are missing, lintian/rpmlint runs when they are.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

from checklist import BUILD, SRC, cache_value, check, run, set_deadline, verdict

set_deadline(280)

# Every path each package must contain (files), relative to /.
EXPECTED = [
    "usr/sbin/dpengined",
    "usr/bin/dpctl",
    "usr/libexec/dpengine/dpengine-rank",
    "usr/libexec/dpengine/dpengine-gloo.so",
    "usr/lib/systemd/system/dpengined.service",
    "etc/dpengine/dpengined.toml",
    "usr/share/dbus-1/system.d/org.dpengine1.conf",
    "usr/share/polkit-1/actions/org.dpengine1.policy",
    "usr/share/polkit-1/rules.d/50-org.dpengine1.rules",
    "usr/lib/sysusers.d/dpengine.conf",
    "usr/lib/tmpfiles.d/dpengine.conf",
    "usr/share/man/man8/dpengined.8.gz",
    "usr/share/man/man1/dpctl.1.gz",
    "usr/share/man/man5/dpengined.toml.5.gz",
    "usr/share/man/man5/org.dpengine1.5.gz",
    "usr/share/man/man7/dpengine-protocol.7.gz",
    "usr/share/doc/dpengine/copyright",
]
DEB_ONLY = ["usr/share/doc/dpengine/changelog.Debian.gz", "usr/share/lintian/overrides/dpengine"]
# Where files may be at all.
ALLOWED = re.compile(r"^(usr/(s?bin|libexec/dpengine|lib/systemd/system|lib/sysusers\.d|lib/tmpfiles\.d|"
                     r"share/(dbus-1/system\.d|polkit-1/(actions|rules\.d)|man/man[1-8]|doc/dpengine|"
                     r"lintian/overrides))|etc/dpengine)/[^/]+$")


def skip(reason: str) -> int:
    print(f"skipped: {reason}")
    return 0


def cpack(generator: str, out: str) -> str | None:
    # One cpack at a time per build directory (it builds the preinstall target there):
    # test_packaging_install.py runs cpack too, maybe at the same time.
    with open(os.path.join(BUILD, ".dpengine-cpack.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res = run(["cpack", "--config", os.path.join(BUILD, "CPackConfig.cmake"), "-G", generator, "-B", out],
                  timeout=240, cwd=BUILD)
    ext = {"DEB": "deb", "RPM": "rpm"}[generator]
    found = glob.glob(os.path.join(out, f"*.{ext}"))
    check(res.returncode == 0 and len(found) == 1, f"cpack -G {generator} wrote one .{ext}",
          (res.stdout + res.stderr)[-3000:])
    return found[0] if found else None


def check_paths(kind: str, paths: set[str], expected: list[str]) -> None:
    for path in expected:
        check(path in paths, f"{kind}: /{path}")
    stray = sorted(p for p in paths if not ALLOWED.match(p))
    check(not stray, f"{kind}: no files outside the expected directories", stray)


def check_gzip(path: str, what: str) -> None:
    with open(path, "rb") as f:
        head = f.read(10)
    check(head[:2] == b"\x1f\x8b" and not head[3] & 0x08 and head[4:8] == b"\0\0\0\0" and head[8] == 2,
          f"{what}: gzip -n -9 (no name, no time stamp, maximum compression)", head.hex())


def check_tree(kind: str, root: str) -> None:
    """The unpacked package: binaries, configuration, man pages."""
    daemon = os.path.join(root, "usr", "sbin", "dpengined")
    with open(daemon, "rb") as f:
        binary = f.read()
    check(b"/usr/libexec/dpengine" in binary and b"/usr/local/" not in binary,
          f"{kind}: dpengined looks for dpengine-rank in /usr/libexec/dpengine")
    out = run([daemon, "--config", os.path.join(root, "etc", "dpengine", "dpengined.toml"), "--strict",
               "--check-config"], timeout=30)
    check(out.returncode == 0 and not out.stderr, f"{kind}: the packaged dpengined accepts the packaged configuration",
          out.stderr)
    out = run([os.path.join(root, "usr", "bin", "dpctl"), "version"], timeout=30)
    check(out.returncode == 0 and out.stdout.startswith("dpctl "), f"{kind}: the packaged dpctl runs", out.stdout + out.stderr)
    for page in glob.glob(os.path.join(root, "usr", "share", "man", "man*", "*.gz")):
        check_gzip(page, f"{kind}: {os.path.relpath(page, root)}")


def test_deb(tmp: str) -> None:
    print("== .deb", flush=True)
    deb = cpack("DEB", os.path.join(tmp, "deb"))
    if not deb:
        return
    print(f"  {os.path.basename(deb)}", flush=True)
    listing = run(["dpkg-deb", "-c", deb]).stdout
    files, modes = set(), {}
    for line in listing.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[0].startswith("-"):
            path = parts[5].removeprefix("./")
            files.add(path)
            modes[path] = (parts[0], parts[1])
    check_paths("deb", files, EXPECTED + DEB_ONLY)
    for path in ("usr/sbin/dpengined", "usr/bin/dpctl", "usr/libexec/dpengine/dpengine-rank"):
        check(modes.get(path) == ("-rwxr-xr-x", "root/root"), f"deb: /{path} is root:root 0755", modes.get(path))
    check(modes.get("etc/dpengine/dpengined.toml") == ("-rw-r--r--", "root/root"),
          "deb: /etc/dpengine/dpengined.toml is root:root 0644", modes.get("etc/dpengine/dpengined.toml"))

    fields = run(["dpkg-deb", "-f", deb]).stdout
    depends = re.search(r"^Depends: (.*)$", fields, re.M)
    for lib in ("libzmq5", "libsodium23", "libssl3", "libsystemd0", "libc6"):
        check(depends is not None and re.search(rf"\b{lib}\b", depends[1]) is not None, f"deb: Depends: {lib}",
              depends and depends[1])
    check(re.search(r"^Package: dpengine$", fields, re.M) is not None, "deb: Package: dpengine")

    control = os.path.join(tmp, "deb-control")
    run(["dpkg-deb", "-e", deb, control])
    conffiles = open(os.path.join(control, "conffiles"), encoding="utf-8").read().split() \
        if os.path.exists(os.path.join(control, "conffiles")) else []
    check(conffiles == ["/etc/dpengine/dpengined.toml"], "deb: conffiles is /etc/dpengine/dpengined.toml", conffiles)
    for script in ("postinst", "prerm", "postrm"):
        path = os.path.join(control, script)
        ok = os.path.exists(path) and os.access(path, os.X_OK)
        check(ok, f"deb: {script} is there and executable")
        if ok:
            res = run(["sh", "-n", path])
            check(res.returncode == 0, f"deb: {script} parses", res.stderr)
    postinst = open(os.path.join(control, "postinst"), encoding="utf-8").read() if os.path.exists(
        os.path.join(control, "postinst")) else ""
    check("systemd-sysusers" in postinst and "enable" not in postinst.replace("enabled", ""),
          "deb: postinst creates the user and enables nothing")

    root = os.path.join(tmp, "deb-root")
    run(["dpkg-deb", "-x", deb, root])
    check_tree("deb", root)

    if not shutil.which("lintian"):
        print("  note: lintian is missing; not run (scripts/install-deps installs it)", flush=True)
        return
    res = run(["lintian", "--display-level", ">=warning", "--no-tag-display-limit", deb], timeout=200)
    tags = [l for l in res.stdout.splitlines() if re.match(r"^[EW]: ", l)]
    errors = [l for l in tags if l.startswith("E: ")]
    warnings = [l for l in tags if l.startswith("W: ")]
    print("  lintian:", "clean" if not tags else "", flush=True)
    for line in tags:
        print(f"    {line}", flush=True)
    check(not errors, "lintian: no errors", errors)
    check(not warnings, "lintian: no warnings without a reason in packaging/lintian-overrides", warnings)


def test_rpm(tmp: str) -> None:
    print("== .rpm", flush=True)
    if not shutil.which("rpmbuild") or not shutil.which("rpm"):
        print("  skipped: rpmbuild/rpm are missing (apt-get install rpm)", flush=True)
        return
    rpm = cpack("RPM", os.path.join(tmp, "rpm"))
    if not rpm:
        return
    print(f"  {os.path.basename(rpm)}", flush=True)
    files = {l.lstrip("/") for l in run(["rpm", "-qlp", rpm]).stdout.splitlines()}
    # rpm -ql also lists the directories the package owns: only /etc/dpengine and its own.
    dirs = {f for f in files if not ALLOWED.match(f)}
    check(dirs <= {"etc/dpengine", "usr/libexec/dpengine", "usr/share/doc/dpengine"},
          "rpm: owns no directory but its own", sorted(dirs))
    check_paths("rpm", files - dirs, EXPECTED)
    config = run(["rpm", "-qp", "--qf", "[%{FILENAMES} %{FILEFLAGS:fflags}\n]", rpm]).stdout
    check(re.search(r"^/etc/dpengine/dpengined\.toml cn$", config, re.M) is not None,
          "rpm: /etc/dpengine/dpengined.toml is %config(noreplace)",
          [l for l in config.splitlines() if "dpengined.toml" in l])
    scripts = run(["rpm", "-qp", "--scripts", rpm]).stdout
    for phase in ("postinstall", "preuninstall", "postuninstall"):
        check(f"{phase} scriptlet" in scripts, f"rpm: has a {phase} scriptlet")
    requires = run(["rpm", "-qpR", rpm]).stdout
    for lib in ("libzmq.so.5", "libsodium.so.23", "libssl.so.3", "libsystemd.so.0"):
        check(lib in requires, f"rpm: requires {lib}", requires)

    root = os.path.join(tmp, "rpm-root")
    os.makedirs(root)
    if shutil.which("rpm2cpio") and shutil.which("cpio"):
        p = subprocess.run(f"rpm2cpio '{rpm}' | cpio -idm --quiet", shell=True, cwd=root, capture_output=True,
                           text=True, timeout=60)
        check(p.returncode == 0, "rpm: unpacks", p.stderr)
        check_tree("rpm", root)

    if not shutil.which("rpmlint"):
        print("  note: rpmlint is missing; not run (scripts/install-deps installs it)", flush=True)
        return
    res = run(["rpmlint", "-c", os.path.join(SRC, "packaging", "rpmlint.toml"), rpm], timeout=120)
    out = res.stdout + res.stderr
    summary = re.search(r"(\d+) errors?, (\d+) warnings?", out)
    print("  rpmlint:", summary[0] if summary else out[-500:], flush=True)
    for line in out.splitlines():
        if re.search(r": [EW]: ", line):
            print(f"    {line}", flush=True)
    check(summary is not None and summary[1] == "0", "rpmlint: no errors", out[-3000:])
    check(summary is not None and summary[2] == "0", "rpmlint: no warnings without a reason in packaging/rpmlint.toml",
          out[-3000:])


def main() -> int:
    if (cache_value("DPENGINE_SANITIZE") or "").upper() in ("ON", "1", "TRUE", "YES"):
        return skip("sanitizer build; the packages are built and checked in the plain build")
    prefix = cache_value("CMAKE_INSTALL_PREFIX")
    if prefix != "/usr":
        return skip(f"{BUILD} is configured with CMAKE_INSTALL_PREFIX={prefix}; packages need /usr "
                    "(the default of a fresh build directory)")
    for tool in ("cpack", "dpkg-deb"):
        if not shutil.which(tool):
            return skip(f"{tool} is missing")
    if not os.path.exists(os.path.join(BUILD, "CPackConfig.cmake")):
        print(f"FAIL: {BUILD}/CPackConfig.cmake is missing (include(CPack) in CMakeLists.txt)")
        return 1
    with tempfile.TemporaryDirectory(prefix="dpengine-packages-") as tmp:
        for test in (test_deb, test_rpm):
            try:
                test(tmp)
            except Exception as e:
                check(False, f"{test.__name__} ran", repr(e))
    return verdict()


if __name__ == "__main__":
    sys.exit(main())
