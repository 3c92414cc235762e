"""dpctl logs RANK: reads the rank's lines from the journal through journalctl.

No journald is needed: a stand-in `journalctl` first on PATH records its arguments. Checks:
the rank's journal field and the unit are the matches (the rank process logs with
DPENGINE_UNIT="rank N"), -n/--lines and -f/--follow pass through, journalctl's output reaches
stdout; a failing journalctl makes dpctl exit 1 with a message; without journalctl dpctl exits
1 and says where the logs are instead; a bad RANK exits 2 without running journalctl. A user
who may not read the system journal (here: nobody, without the groups systemd-journal, adm,
wheel) gets exit status 4 and a message naming the groups, without journalctl (which would
say "-- No entries --" and exit 0); with the group adm, journalctl runs.
"""

import grp
import os
import shutil
import stat
import tempfile

from busharness import NOBODY, dpctl, dpctl_path, run
from harness import check, check_eq, check_in, log, run_test

FAKE = """#!/bin/sh
printf '%s\\n' "$@" > "$(dirname "$0")/args"
echo "Nov 27 10:00:00.000000 host dpengine-rank[42]: ready: DP rank 2 of 4"
exit ${FAKE_STATUS:-0}
"""


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="dpe-logs-")
    try:
        fake_dir = os.path.join(tmp, "bin")
        os.mkdir(fake_dir)
        fake = os.path.join(fake_dir, "journalctl")
        with open(fake, "w", encoding="utf-8") as f:
            f.write(FAKE)
        os.chmod(fake, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        args_file = os.path.join(fake_dir, "args")
        path = f"{fake_dir}:/usr/bin:/bin"

        r = dpctl(None, "logs", "2", "-n", "50", env={"PATH": path})
        check_eq(r.returncode, 0, "dpctl logs 2 -n 50: exit status")
        check_in("dpengine-rank[42]: ready: DP rank 2 of 4", r.stdout, "journalctl's output on stdout")
        with open(args_file, encoding="utf-8") as f:
            args = f.read().splitlines()
        check("DPENGINE_UNIT=rank 2" in args, "journalctl matches DPENGINE_UNIT=rank 2", args)
        check("_SYSTEMD_UNIT=dpengined.service" in args, "journalctl matches the unit", args)
        check("--lines=50" in args and "--no-pager" in args, "--lines=50 and --no-pager passed", args)
        check("--follow" not in args, "no --follow unless asked", args)

        os.unlink(args_file)
        r = dpctl(None, "logs", "--follow", "0", env={"PATH": path})
        check_eq(r.returncode, 0, "dpctl logs --follow 0: exit status")
        with open(args_file, encoding="utf-8") as f:
            args = f.read().splitlines()
        check("--follow" in args and "DPENGINE_UNIT=rank 0" in args, "--follow passed, rank 0 matched", args)

        r = dpctl(None, "logs", "1", env={"PATH": path, "FAKE_STATUS": "1"})
        check_eq(r.returncode, 1, "journalctl failing: exit status")
        check_in("journalctl exited with status 1", r.stderr, "journalctl failing: message")

        os.unlink(args_file)
        r = dpctl(None, "logs", "x", env={"PATH": path})
        check_eq(r.returncode, 2, "dpctl logs x: exit status")
        check(not os.path.exists(args_file), "dpctl logs x did not run journalctl")

        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)
        r = dpctl(None, "logs", "1", env={"PATH": empty})
        check_eq(r.returncode, 1, "no journalctl: exit status")
        check_in("cannot run journalctl", r.stderr, "no journalctl: message")
        check_in("rank 1's lines start with 'rank 1:'", r.stderr, "no journalctl: says where the logs are")

        # Users who may not read the system journal. The stand-in must be reachable for them.
        os.chmod(tmp, 0o755)
        os.chmod(fake_dir, 0o777)
        r = dpctl(None, "logs", "1", user=NOBODY, env={"PATH": path})
        check_eq(r.returncode, 4, "nobody: exit status (access denied)")
        check_in("may not read the system journal", r.stderr, "nobody: the message says why")
        check_in("'systemd-journal'", r.stderr, "nobody: the message names the group that may")
        check(not os.path.exists(args_file), "nobody: journalctl was not run")
        try:
            adm = grp.getgrnam("adm").gr_gid
        except KeyError:
            adm = None
            log("  (no group adm here: the allowed-group case is skipped)")
        if adm is not None:
            r = run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={adm}", "--",
                     dpctl_path(), "logs", "1"], env={"PATH": path})
            check_eq(r.returncode, 0, "nobody with the group adm: exit status")
            check(os.path.exists(args_file), "nobody with the group adm: journalctl was run")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    run_test(main, timeout=60)
