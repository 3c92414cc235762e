"""Issue 14, smaller items: who owns the node key, and which authorized_keys files the head
refuses. Runs dpctl and `dpengined --check-config` as root, the way a packaged set-up does.

  - Without a user dpengine, `dpctl keys generate` as root keeps the key root's (0600) and says
    exactly what to chown.
  - In a private mount namespace whose /etc/passwd and /etc/group list a user and group
    dpengine, it gives the secret key to that user (still 0600); the daemon accepts the key
    at 0640 with group dpengine, and refuses it at 0640 with group root, saying what to run.
  - The head refuses an authorized_keys file anyone may write, two lines for one node and a
    line with its own node name, each naming the file (and the line).
"""

import os
import pwd
import shutil
import subprocess
import tempfile

import harness
from harness import check, check_eq, check_in, run_test
from netns import dpctl_path, make_key

SERVICE_UID = 4242


def check_config(directory: str, key: str, authorized: str) -> harness.Completed:
    config = os.path.join(directory, "head.toml")
    with open(config, "w") as f:
        f.write(f'[node]\nname = "head"\n[security]\nkey = "{key}"\nauthorized_keys = "{authorized}"\n')
    return harness.run_dpengined(["--config", config, "--check-config", "-dp", "2", "-dpl", "1",
                                  "--data-parallel-address", "127.0.0.1"])


def main() -> None:
    try:
        pwd.getpwnam("dpengine")
        has_service_user = True
    except KeyError:
        has_service_user = False
    tmp = tempfile.mkdtemp(prefix="dpe-keys-")
    try:
        node_b = make_key(tmp, "node-b")
        authorized = os.path.join(tmp, "authorized_keys")
        with open(authorized, "w") as f:
            f.write(f"{node_b.public} node-b\n")

        # --- as root, without a user dpengine on this system
        if not has_service_user:
            key = os.path.join(tmp, "plain.key")
            out = subprocess.run([dpctl_path(), "keys", "generate", key, "--node", "head"], capture_output=True,
                                 text=True, timeout=20)
            check(out.returncode == 0, "dpctl keys generate succeeds", out.stderr)
            st = os.stat(key)
            check_eq((st.st_uid, st.st_mode & 0o777), (0, 0o600), "the key stays root's, mode 0600")
            check_in(f"chown dpengine {key}", out.stdout, "dpctl says what to chown")

        # --- with a user and group dpengine (a private mount namespace's /etc/passwd, /etc/group)
        etc = os.path.join(tmp, "etc")
        os.mkdir(etc)
        for name, line in (("passwd", f"dpengine:x:{SERVICE_UID}:{SERVICE_UID}::/var/lib/dpengine:/usr/sbin/nologin\n"),
                           ("group", f"dpengine:x:{SERVICE_UID}:\n")):
            with open(f"/etc/{name}") as src, open(os.path.join(etc, name), "w") as dst:
                dst.write("".join(l for l in src if not l.startswith("dpengine:")) + line)
        key = os.path.join(tmp, "head.key")
        config = os.path.join(tmp, "head.toml")
        with open(config, "w") as f:
            f.write(f'[node]\nname = "head"\n[security]\nkey = "{key}"\nauthorized_keys = "{authorized}"\n')
        check_cmd = (f"{harness.dpengined_path()} --config {config} --check-config -dp 2 -dpl 1 "
                     "--data-parallel-address 127.0.0.1")
        script = f"""
set -u
mount --bind {etc}/passwd /etc/passwd && mount --bind {etc}/group /etc/group || exit 99
{dpctl_path()} keys generate {key} --node head > {tmp}/generate.out 2>&1; echo $? > {tmp}/generate.rc
stat -c '%u %a' {key} > {tmp}/generated.stat
chown root:dpengine {key} && chmod 640 {key}
{check_cmd} > {tmp}/group-dpengine.out 2>&1; echo $? > {tmp}/group-dpengine.rc
chgrp root {key}
{check_cmd} > {tmp}/group-root.out 2>&1; echo $? > {tmp}/group-root.rc
"""
        ran = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                             capture_output=True, text=True, timeout=60)
        check(ran.returncode == 0, "the script in a private mount namespace ran", ran.stdout + ran.stderr)
        read = lambda name: open(os.path.join(tmp, name)).read().strip()
        check(read("generate.rc") == "0", "dpctl keys generate succeeds", read("generate.out"))
        check_eq(read("generated.stat"), f"{SERVICE_UID} 600", "the secret key is dpengine's, mode 0600")
        check_in("Owner: dpengine", read("generate.out"), "dpctl says who owns the key")
        check(read("group-dpengine.rc") == "0", "the daemon accepts the key at 0640 with group dpengine",
              read("group-dpengine.out"))
        check(read("group-root.rc") != "0", "the daemon refuses the key at 0640 with group root")
        check_in(f"chmod 600 {key}", read("group-root.out"), "the refusal says what to run")

        # --- authorized_keys files the head refuses
        own = make_key(tmp, "head-own")
        other = make_key(tmp, "node-c")
        for what, text, mode, expect in (
                ("a file anyone may write", f"{node_b.public} node-b\n", 0o666, f"{authorized} is writable by anyone"),
                ("two lines for one node", f"{node_b.public} node-b\n# c\n{other.public} node-b ranks=1-1\n", 0o644,
                 f"{authorized}:3: node 'node-b' is already listed on line 1"),
                ("a line with the head's own name", f"{node_b.public} node-b\n{other.public} head\n", 0o644,
                 f"{authorized}:2: 'head' is the head's own node name")):
            with open(authorized, "w") as f:
                f.write(text)
            os.chmod(authorized, mode)
            done = check_config(tmp, own.path, authorized)
            check(done.returncode != 0, f"{what}: --check-config refuses it (exit {done.returncode})")
            check_in(expect, done.output, f"{what}: the error names the file and line")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_test(main, timeout=120)
