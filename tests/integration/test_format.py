"""The C++ and CUDA sources follow the tree's .clang-format: `clang-format-14 --dry-run
--Werror` on every tracked *.cpp, *.hpp and *.cu file reports nothing. Fix a failure with
`clang-format-14 -i FILE`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from checklist import SRC, check, run, set_deadline, verdict

set_deadline(120)

SUFFIXES = (".cpp", ".hpp", ".cu")


def main() -> int:
    tool = shutil.which("clang-format-14")
    if not check(tool is not None, "clang-format-14 is installed (scripts/install-deps)"):
        return verdict()
    check(os.path.isfile(os.path.join(SRC, ".clang-format")), "the tree has a .clang-format")
    listed = subprocess.run(["git", "-C", SRC, "ls-files", "-z"], capture_output=True, check=False)
    if listed.returncode == 0:
        files = [f for f in listed.stdout.decode().split("\0") if f.endswith(SUFFIXES)]
    else:  # not a git checkout (a source tarball): every source file under the tree
        files = [os.path.relpath(os.path.join(d, f), SRC) for d, _, names in os.walk(SRC)
                 if "/build" not in d for f in names if f.endswith(SUFFIXES)]
    check(len(files) > 100, f"the sources are found ({len(files)} files)")
    out = run([tool, "--dry-run", "--Werror", *files], timeout=100, cwd=SRC)
    offending = sorted({line.split(":", 1)[0] for line in out.stderr.splitlines() if ": error:" in line})
    check(out.returncode == 0 and not offending, "every source file is formatted as .clang-format says",
          offending[:20])
    return verdict()


if __name__ == "__main__":
    sys.exit(main())
