"""The shipped etc/dpengine/dpengined.toml against the daemon's built-in defaults.

daemon/core/config.cpp is the one source of the defaults; the shipped file is generated from
`dpengined --config /dev/null --check-config` by packaging/gen-default-config.py. Checks:
- the shipped file is exactly what the generator prints now (else: regenerate it with
  `packaging/gen-default-config.py BUILD/daemon/dpengined > etc/dpengine/dpengined.toml`);
- every setting in it is commented out, so that it changes nothing as shipped: the daemon
  reads it to the same effective configuration as /dev/null;
- uncommented, it holds every key at its default: `--check-config` of the uncommented file
  equals that of /dev/null (node.name is shipped as "" = the host name, which the daemon
  fills in), and its keys are exactly the keys --check-config prints;
- the header explains drop-ins and their order.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

from checklist import DPENGINED, SRC, check, run, verdict

SHIPPED = os.path.join(SRC, "etc", "dpengine", "dpengined.toml")
GENERATOR = os.path.join(SRC, "packaging", "gen-default-config.py")


def check_config(path: str) -> subprocess.CompletedProcess:
    return run([DPENGINED, "--config", path, "--strict", "--check-config"])


def keys_of(toml_text: str) -> list[str]:
    section, keys = "", []
    for line in toml_text.splitlines():
        if m := re.match(r"^\[(\w+)\]$", line):
            section = m[1]
        elif m := re.match(r"^(\w+) = ", line):
            keys.append(f"{section}.{m[1]}")
    return keys


def main() -> int:
    with open(SHIPPED, encoding="utf-8") as f:
        shipped = f.read()

    print("== generated from --check-config", flush=True)
    gen = run([sys.executable, GENERATOR, DPENGINED])
    check(gen.returncode == 0, "packaging/gen-default-config.py ran", gen.stderr)
    if gen.returncode == 0:
        same = gen.stdout == shipped
        diff = ""
        if not same:
            with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as t:
                t.write(gen.stdout)
            diff = run(["diff", "-u", SHIPPED, t.name]).stdout
            os.unlink(t.name)
        check(same, "etc/dpengine/dpengined.toml is what the generator prints "
                    "(regenerate: packaging/gen-default-config.py BUILD/daemon/dpengined > etc/dpengine/dpengined.toml)",
              diff)

    print("== as shipped", flush=True)
    defaults = check_config("/dev/null")
    check(defaults.returncode == 0, "dpengined --check-config with /dev/null", defaults.stderr)
    active = [l for l in shipped.splitlines() if l.strip() and not l.lstrip().startswith("#")
              and not re.match(r"^\[\w+\]$", l.strip())]
    check(not active, "every setting in the shipped file is commented out", active)
    as_shipped = check_config(SHIPPED)
    check(as_shipped.returncode == 0 and not as_shipped.stderr, "the shipped file is accepted (--strict, no warnings)",
          as_shipped.stderr)
    check(as_shipped.stdout == defaults.stdout, "as shipped, the file changes nothing")

    print("== uncommented", flush=True)
    uncommented = "\n".join(re.sub(r"^#(\w+ = )", r"\1", l) for l in shipped.splitlines()) + "\n"
    with tempfile.TemporaryDirectory(prefix="dpengine-config-") as tmp:
        path = os.path.join(tmp, "dpengined.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(uncommented)
        out = check_config(path)
        check(out.returncode == 0 and not out.stderr, "the uncommented file is accepted (--strict, no warnings)",
              out.stderr)
        check(out.stdout == defaults.stdout, "uncommented, it gives the built-in defaults",
              "\n".join(f"  {a!r} != {b!r}" for a, b in zip(out.stdout.splitlines(), defaults.stdout.splitlines()) if a != b))
    shipped_keys = keys_of(uncommented)
    default_keys = keys_of(defaults.stdout)
    check(sorted(shipped_keys) == sorted(default_keys) and len(set(shipped_keys)) == len(shipped_keys),
          f"the file lists each of the {len(default_keys)} keys once",
          {"missing": sorted(set(default_keys) - set(shipped_keys)), "extra": sorted(set(shipped_keys) - set(default_keys))})
    name = re.search(r'^#name = (.*)$', shipped, re.M)
    check(name is not None and name[1] == '""', 'node.name is shipped as "" (the host name)', name and name[1])

    print("== header", flush=True)
    header = shipped.split("\n\n", 1)[0]
    for words in ("dpengined.toml.d/*.toml", "order of their names", "command-line options",
                  "dpengined --check-config", "dpengined.toml(5)"):
        check(words in header, f"the header mentions '{words}'")

    return verdict()


if __name__ == "__main__":
    sys.exit(main())
