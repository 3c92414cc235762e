"""dpctl status/ranks and the org.dpengine1 interface on a private system bus.

A private dbus-daemon with the shipped policy file; dpengined with DP=4 on one node. Checks:
`dpctl status --json` lists 4 ready ranks with the right fields (pids are the real rank
processes, Served counts the completions sent); `dpctl status` and `dpctl ranks` print the
header block and an aligned table with a legend, `--no-legend` drops header and legend, colour
only on a terminal; `busctl introspect` shows the interface; the XML busctl reads from the
running daemon has exactly the methods, properties and signatures `dpengined --bus-introspect`
prints, for /org/dpengine1 and /org/dpengine1/rank/0 (so the two never drift).
"""

import os
import pty
import re
import select
import subprocess
import time

from busharness import (MANAGER_INTERFACE, MANAGER_PATH, RANK_INTERFACE, SERVICE, SystemBus, busctl, dpctl,
                        dpctl_json, dpctl_path, introspection_members, rank_by_number, wait_for_name)
from harness import (Daemon, check, check_eq, check_in, log, post_json, run_dpengined, run_test, slow_factor,
                     synthetic_completion)

DP = 4
COMPLETIONS = 8
RANK_KEYS = ["rank", "state", "node", "device", "pid", "in_flight", "queued", "served", "restarts", "last_error",
             "reason", "group_kind", "group_epoch", "wave", "steps_per_second", "dummy_step_share", "memory_used"]
STATUS_KEYS = ["role", "node", "dp_size", "epoch", "ready_ranks", "version", "ranks", "nodes"]
COLUMNS = ["RANK", "STATE", "NODE", "DEVICE", "PID", "INFLIGHT", "QUEUED", "SERVED", "RESTARTS", "GROUP", "EPOCH",
           "WAVE", "STEPS/S", "DUMMY", "MEM", "ERROR"]
RIGHT = {"RANK", "PID", "INFLIGHT", "QUEUED", "SERVED", "RESTARTS", "EPOCH", "WAVE", "STEPS/S", "DUMMY", "MEM"}


def run_in_pty(argv: list[str], env: dict, timeout: float = 20.0) -> str:
    """Runs argv with stdout on a pseudo-terminal; returns what it printed there."""
    master, slave = pty.openpty()
    full = dict(os.environ)
    full.update(env)
    full["TERM"] = "xterm"
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=full)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout * slow_factor()
    while time.monotonic() < deadline:
        r, _, _ = select.select([master], [], [], 0.1)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(master)
    return out.decode("utf-8", "replace").replace("\r\n", "\n")


def check_table(text: str, ranks: dict[int, dict], legend: bool) -> None:
    """The ranks table: header (when legend), one aligned row per rank with the JSON's values,
    then a blank line and the legend line (when legend)."""
    lines = text.rstrip("\n").split("\n")
    if legend:
        check_eq(lines[-1], f"{len(ranks)} ranks listed.", "legend line")
        check_eq(lines[-2], "", "a blank line before the legend")
        lines = lines[:-2]
        header, rows = lines[0], lines[1:]
        check_eq(header.split(), COLUMNS, "table header")
    else:
        check(not any("listed." in line for line in lines), "--no-legend: no legend line", text)
        check(not any(line.startswith("RANK") or " STATE " in line for line in lines), "--no-legend: no header", text)
        header, rows = None, lines
    check_eq(len(rows), len(ranks), "table rows")
    # Alignment: with the header, every value sits under its title (left-aligned columns start
    # where the title starts, right-aligned ones end where it ends).
    positions = {m[0]: (m.start(), m.end()) for m in re.finditer(r"\S+", header)} if header else None
    for row, (n, r) in zip(rows, sorted(ranks.items())):
        error = (f"{r['reason']}: {r['last_error']}" if r["reason"] and r["last_error"]
                 else r["reason"] or r["last_error"] or "-")
        values = {"RANK": str(n), "STATE": r["state"], "NODE": r["node"] or "-", "DEVICE": r["device"] or "-",
                  "PID": str(r["pid"]) if r["pid"] else "-", "INFLIGHT": str(r["in_flight"]),
                  "QUEUED": str(r["queued"]), "SERVED": str(r["served"]), "RESTARTS": str(r["restarts"]),
                  "GROUP": r["group_kind"], "EPOCH": "-", "WAVE": "-", "DUMMY": "-", "MEM": "-", "ERROR": error}
        if positions is None:
            check(row.lstrip().startswith(f"{n} {r['state']} "), f"row of rank {n} starts with its number and state",
                  row)
            continue
        for col in COLUMNS:
            start, end = positions[col]
            if col == "STEPS/S":
                # A rate over the last seconds: it may have moved since the JSON was read.
                v = re.search(r"\S*$", row[:end])[0]
                check(re.fullmatch(r"\d+\.\d", v), f"rank {n}: STEPS/S {v!r} is a rate", row)
            else:
                v = values[col]
            if col in RIGHT:
                ok = row[end - len(v):end] == v and row[end - len(v) - 1:end - len(v)] in (" ", "") \
                    and row[end:end + 1] in (" ", "")
            else:
                ok = row[start:start + len(v)] == v and (start == 0 or row[start - 1] == " ") \
                    and row[start + len(v):start + len(v) + 1] in (" ", "")
            if not ok:
                check(False, f"rank {n}: {col} {v!r} aligned under its title", f"\n{header}\n{row}")
    log(f"  ok: {len(rows)} rows aligned under the header" if header else f"  ok: {len(rows)} rows without header")


def compare_interfaces(bus: SystemBus, path: str, interface: str, documented_xml: str) -> None:
    live = busctl(bus, "--xml-interface", "introspect", SERVICE, path)
    check(live.returncode == 0, f"busctl --xml-interface introspect {path}", live.stderr)
    want = introspection_members(documented_xml, interface)
    got = introspection_members(live.stdout, interface)
    for key in sorted(want):
        check(key in got, f"{interface}: {key} (from --bus-introspect) is exported on {path}", sorted(got))
        check_eq(got[key], want[key], f"{interface}: {key} signature on {path}")
    for key in sorted(set(got) - set(want)):
        check(False, f"{interface}: exported {key} on {path} is in --bus-introspect")
    log(f"  ok: {interface} on {path}: {len(want)} members, the same both ways")


def main() -> None:
    documented = run_dpengined(["--bus-introspect"])
    check(documented.returncode == 0 and "<node" in documented.stdout, "dpengined --bus-introspect prints XML",
          documented.output)
    with SystemBus() as bus:
        config = {"data_parallel": {"size": DP}, "engine": {"step_time_ms": 2.0}}
        with Daemon(config, env=bus.env, name="status") as d:
            d.wait_ready(30)
            check(wait_for_name(bus, 10), f"{SERVICE} appears on the bus")
            for i in range(COMPLETIONS):
                prompt = f"status check {i}"
                status, body = post_json(d.port, "/v1/completions", {"prompt": prompt, "max_tokens": 4, "seed": i})
                check_eq(status, 200, f"completion {i}")
                check_eq(body["choices"][0]["text"], synthetic_completion(prompt, i, 4).text, f"completion {i} text")

            # --- JSON
            start = time.monotonic()
            st = dpctl_json(bus, "status")
            elapsed = time.monotonic() - start
            check(elapsed < 2.0 * slow_factor(), f"dpctl status --json answered in {elapsed * 1000:.0f} ms")
            check_eq(list(st.keys()), STATUS_KEYS, "status --json keys")
            check_eq(st["role"], "head", "role")
            check_eq(st["dp_size"], DP, "dp_size")
            check_eq(st["ready_ranks"], DP, "ready_ranks")
            check(isinstance(st["epoch"], int) and st["epoch"] >= 1, "epoch is a number >= 1", st["epoch"])
            version = dpctl(bus, "version").stdout.split()[-1]
            check_eq(st["version"], version, "version (dpctl's own)")
            check(isinstance(st["node"], str) and st["node"], "node is named", st["node"])
            ranks = rank_by_number(st)
            check_eq(sorted(ranks), list(range(DP)), "ranks listed")
            pids = d.ranks()
            for n, r in sorted(ranks.items()):
                check_eq(list(r.keys()), RANK_KEYS, f"rank {n} keys")
                check_eq(r["state"], "ready", f"rank {n} state")
                check_eq(r["pid"], pids[n], f"rank {n} pid (the real rank process)")
                check_eq(r["node"], st["node"], f"rank {n} node")
                check(r["device"], f"rank {n} names its device", r)
                check_eq((r["in_flight"], r["queued"], r["restarts"], r["last_error"], r["reason"]),
                         (0, 0, 0, "", ""), f"rank {n} idle, never restarted, no error")
                check_eq((r["group_kind"], r["group_epoch"], r["wave"], r["dummy_step_share"], r["memory_used"]),
                         ("none", 0, 0, 0, 0), f"rank {n}: no DP group in independent mode, no device memory measured")
            check_eq(sum(r["served"] for r in ranks.values()), COMPLETIONS, "served, summed over the ranks")
            # (steps_per_second is a rate over the last seconds: it may move between the two reads)
            def steady(listed: list[dict]) -> list[dict]:
                return [{k: v for k, v in r.items() if k != "steps_per_second"} for r in listed]
            check_eq(steady(dpctl_json(bus, "ranks")), steady(st["ranks"]), "ranks --json is the status's ranks array")

            # --- text
            r = dpctl(bus, "status")
            check_eq(r.returncode, 0, "dpctl status exit status")
            head, _, table = r.stdout.partition("\n\n")
            fields = dict(re.match(r"\s*([^:]+):\s(.*)", line).groups() for line in head.split("\n"))
            check_eq(fields, {"Role": "head", "Node": st["node"], "DP size": str(DP), "Epoch": str(st["epoch"]),
                              "Ready ranks": f"{DP}/{DP}", "Version": version}, "status header block")
            labels = [line.index(":") for line in head.split("\n")]
            check(len(set(labels)) == 1, "the header block's colons line up", head)
            check_table(table, ranks, legend=True)
            r = dpctl(bus)
            check_eq((r.returncode, r.stdout.partition("\n\n")[0]), (0, head), "status is the default command")
            r = dpctl(bus, "ranks")
            check_eq(r.returncode, 0, "dpctl ranks exit status")
            check(all(not line.endswith(" ") for line in r.stdout.split("\n")), "no trailing blanks", r.stdout)
            check_table(r.stdout, ranks, legend=True)
            r = dpctl(bus, "ranks", "--no-legend")
            check_table(r.stdout, ranks, legend=False)
            r = dpctl(bus, "--no-legend", "status")
            check_in(f"Ready ranks: {DP}/{DP}", r.stdout, "status --no-legend keeps the header block")
            check(" listed." not in r.stdout and "\nRANK" not in r.stdout, "status --no-legend: no table legend",
                  r.stdout)
            check("\x1b[" not in dpctl(bus, "status").stdout, "no colour when stdout is not a terminal")
            tty = run_in_pty([dpctl_path(), "ranks"], bus.env)
            check_in("\x1b[0;32mready\x1b[0m", tty, "on a terminal: ready in green")
            tty = run_in_pty([dpctl_path(), "ranks"], dict(bus.env, NO_COLOR="1"))
            check("\x1b[" not in tty and "ready" in tty, "NO_COLOR=1: no colour on a terminal", tty)

            # --- the interface on the bus
            r = busctl(bus, "introspect", SERVICE, MANAGER_PATH)
            check_eq(r.returncode, 0, "busctl introspect org.dpengine1 /org/dpengine1")
            check_in(MANAGER_INTERFACE, r.stdout, "busctl introspect")
            check(re.search(r"^\.ListRanks\s+method\s+-\s+a\(usssuuuttss\)", r.stdout, re.M),
                  "busctl introspect shows ListRanks -> a(usssuuuttss)", r.stdout)
            compare_interfaces(bus, MANAGER_PATH, MANAGER_INTERFACE, documented.stdout)
            compare_interfaces(bus, f"{MANAGER_PATH}/rank/0", RANK_INTERFACE, documented.stdout)
            r = busctl(bus, "--no-pager", "tree", SERVICE)
            for n in range(DP):
                check_in(f"/org/dpengine1/rank/{n}", r.stdout, "busctl tree")
            r = busctl(bus, "get-property", SERVICE, f"{MANAGER_PATH}/rank/2", RANK_INTERFACE, "Pid")
            check_eq(r.stdout.strip(), f"u {pids[2]}", "rank 2's Pid property")


if __name__ == "__main__":
    run_test(main, timeout=120)
