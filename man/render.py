#!/usr/bin/env python3
"""Renders one scdoc page to roff and a gzipped copy: render.py SCDOC VERSION SRC.scd OUT

Writes OUT (roff, e.g. build/man/dpengined.8) and OUT.gz (gzip -n -9, for installing).
@DPENGINE_VERSION@ in the source is replaced with VERSION. scdoc's output is then tidied so
that `mandoc -Tlint` has nothing but style remarks to say: scdoc puts a paragraph macro (.P)
after every heading, before every section and at the end of every indented block, which
mandoc reports as "skipping paragraph macro". The tidy-up drops the ones mandoc ignores
anyway, and moves the ones that end an indented block (.P .RE) after it (.RE .P), where
they still separate the entries for groff. The rendered text is unchanged.
"""

import os
import subprocess
import sys

HEADINGS = (".SH", ".SS", ".TH")


def tidy(lines: list[str]) -> list[str]:
    # .P .RE  ->  .RE .P
    swapped: list[str] = []
    for line in lines:
        if line == ".RE" and swapped and swapped[-1] == ".P":
            swapped[-1] = ".RE"
            swapped.append(".P")
        else:
            swapped.append(line)
    out: list[str] = []
    for i, line in enumerate(swapped):
        if line == ".P":
            prev = out[-1] if out else ""
            nxt = swapped[i + 1] if i + 1 < len(swapped) else ""
            if prev.startswith(HEADINGS) or prev == ".P" or nxt.startswith(HEADINGS) or nxt in ("", ".P"):
                continue
        out.append(line)
    return out


def main() -> None:
    if len(sys.argv) != 5:
        raise SystemExit("usage: render.py SCDOC VERSION SRC.scd OUT")
    scdoc, version, src, out = sys.argv[1:]
    with open(src, encoding="utf-8") as f:
        text = f.read().replace("@DPENGINE_VERSION@", version)
    roff = subprocess.run([scdoc], input=text, capture_output=True, text=True)
    if roff.returncode != 0:
        sys.stderr.write(f"{src}: {roff.stderr}")
        raise SystemExit(1)
    result = "\n".join(tidy(roff.stdout.split("\n"))) + "\n"
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(result)
    os.replace(tmp, out)
    # gzip -n -9: no name, no time stamp, so that the packages are reproducible.
    with open(out + ".gz.tmp", "wb") as gz:
        subprocess.run(["gzip", "-n", "-9", "-c", out], stdout=gz, check=True)
    os.replace(out + ".gz.tmp", out + ".gz")


if __name__ == "__main__":
    main()
