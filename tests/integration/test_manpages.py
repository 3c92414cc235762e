"""The man pages against the code they document.

- Every rendered page (BUILD/man/*.N, from man/*.scd) is `mandoc -Tlint` clean. Only STYLE
  remarks are ignored: scdoc writes lower-case titles (as systemd's pages have) and keeps the
  source's line breaks, which mandoc's style checks flag ("lower case character in document
  title", "input text line longer than 80 bytes"); neither changes the rendered page.
- dpengined(8): every option of `dpengined --help` is documented under OPTIONS, with the same
  value name, and nothing else is; every exit code of daemon/core/exit_codes.hpp is under
  EXIT STATUS, and nothing else is.
- dpengined.toml(5): every key printed by `dpengined --check-config` is documented under
  OPTIONS in its [section], and nothing else is; a "Default X" in a key's text matches the
  built-in default.
- dpctl(1): every command, option and exit status of `dpctl --help` (and
  daemon/core/dpctl_exit.hpp) is documented, and nothing else is.
- dpengine-protocol(7): every message type of daemon/core/wire.hpp (number and name), every
  field name the encoder writes, and every REFUSED/ERROR reason code the head and the ranks
  send appear in the page.
- org.dpengine1(5): every interface, method (with its in and out signatures) and property
  (with its type) of `dpengined --bus-introspect` is documented in the section of its
  interface, and nothing else is; every polkit action of etc/polkit-1 is named.
- dpengined.toml(5)'s http backend examples: each is a configuration `dpengined --check-config`
  accepts, and the llama-cpp-python one starts the server with the options the tests run it
  with (tests/integration/llamaserver.py).
- The section order follows systemd's: NAME, SYNOPSIS, DESCRIPTION, OPTIONS, COMMANDS,
  EXIT STATUS, ENVIRONMENT, FILES, ..., EXAMPLES, SEE ALSO (those a page has).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET

import llamaserver
from harness import to_toml

from checklist import BUILD, DPENGINED, SRC, check, default_config, int_constants, read, run, run_parts

MANDIR = os.path.join(BUILD, "man")
DPCTL = os.path.join(BUILD, "ctl", "dpctl")
PAGES = ["dpengined.8", "dpctl.1", "dpengined.toml.5", "dpengine-protocol.7", "org.dpengine1.5"]
ORDER = ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "COMMANDS", "EXIT STATUS", "ENVIRONMENT",
         "FILES", "EXAMPLES", "SEE ALSO"]


def plain(roff: str) -> str:
    """Roff text without font escapes and zero-width joiners: "\\fB--port\\fR" -> "--port"."""
    text = re.sub(r"\\f[BIRP]", "", roff)
    text = text.replace("\\&", "").replace("\\(aq", "'").replace("\\-", "-").replace("\\e", "\\")
    return text


def sections(roff: str) -> dict[str, list[str]]:
    """Top-level section name -> its roff lines."""
    out: dict[str, list[str]] = {}
    current = None
    for line in roff.splitlines():
        if m := re.match(r'^\.SH "?([^"]+)"?$', line):
            current = m[1].strip()
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def terms(lines: list[str]) -> list[tuple[str | None, str, str]]:
    """The definition-list terms of a section (lines outside .RS/.RE blocks that start with
    bold text): (subsection, term line as plain text, the indented text that follows)."""
    found: list[tuple[str | None, str, list[str]]] = []
    depth, sub, last = 0, None, None
    for line in lines:
        if m := re.match(r'^\.SS "?([^"]+)"?$', line):
            sub = m[1].strip()
            last = None
        elif line.startswith(".RS"):
            depth += 1
        elif line.startswith(".RE"):
            depth -= 1
            if depth == 0:
                last = None
        elif depth == 0 and line.startswith("\\fB"):
            last = [sub, plain(line), []]
            found.append(last)
        elif depth > 0 and last is not None and not line.startswith("."):
            last[2].append(plain(line))
    return [(s, t, " ".join(body)) for s, t, body in found]


def lint(page: str) -> None:
    out = run(["mandoc", "-Tlint", "-W", "all", os.path.join(MANDIR, page)])
    problems = [l for l in (out.stdout + out.stderr).splitlines() if l.strip() and ": STYLE: " not in l]
    check(not problems, f"{page}: mandoc -Tlint reports nothing above STYLE", "\n".join(problems))


def section_order(page: str, names: list[str]) -> None:
    known = [n for n in names if n in ORDER]
    check(known == sorted(known, key=ORDER.index), f"{page}: sections in systemd's order", names)
    check(names[:3] == ["NAME", "SYNOPSIS", "DESCRIPTION"] or page.endswith(".7") and names[:2] == ["NAME", "DESCRIPTION"],
          f"{page}: starts with NAME, SYNOPSIS, DESCRIPTION", names[:3])
    check(names[-1] == "SEE ALSO", f"{page}: ends with SEE ALSO", names[-1:])


def open_page(page: str) -> tuple[str, dict[str, list[str]]]:
    """A rendered page ("dpctl.1") and its sections, after checking the sections' order."""
    name, section = page.rsplit(".", 1)
    print(f"== {name}({section})", flush=True)
    roff = read(os.path.join(MANDIR, page))
    secs = sections(roff)
    section_order(page, list(secs))
    return roff, secs


def help_options() -> dict[str, str]:
    """--help's options: flag -> value name ("" for none), e.g. {"--port": "PORT", "-dp": "N"}."""
    out = run([DPENGINED, "--help"])
    opts: dict[str, str] = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^\s+((?:-{1,2}[A-Za-z0-9][A-Za-z0-9-]*\s*)+)(?:=(\S+))?\s{2,}\S", line)
        if not m:
            continue
        for flag in m[1].split():
            opts[flag] = m[2] or ""
    return opts


def documented_options(lines: list[str]) -> dict[str, str]:
    """An OPTIONS section's flags -> value name ("" for none): "--port=PORT, -p" terms."""
    documented: dict[str, str] = {}
    for _, term, _ in terms(lines):
        value = re.search(r"=(\S+)\s*$", term)
        for flag in re.findall(r"(?<![\w-])(-{1,2}[A-Za-z0-9][A-Za-z0-9-]*)", term):
            documented[flag] = value[1] if value else ""
    return documented


def check_options(help_opts: dict[str, str], documented: dict[str, str], program: str = "") -> None:
    """Every --help option is documented with the same value name, and nothing else is.
    `program`: "dpctl " to name it in the checks."""
    for flag, value in sorted(help_opts.items()):
        check(flag in documented, f"{program}{flag} (from --help) is documented")
        if flag in documented:
            check(documented[flag] == value, f"{program}{flag} takes {value or 'no value'} in both", documented[flag])
    for flag in sorted(set(documented) - set(help_opts)):
        check(False, f"documented option {program}{flag} exists in --help")


def documented_statuses(secs: dict[str, list[str]]) -> set[int]:
    """The exit statuses listed under EXIT STATUS."""
    return {int(t) for _, t, _ in terms(secs.get("EXIT STATUS", [])) if t.strip().isdigit()}


def test_dpengined_8() -> None:
    _, secs = open_page("dpengined.8")
    help_opts = help_options()
    check(len(help_opts) >= 10, f"--help lists options ({len(help_opts)})", help_opts)
    check_options(help_opts, documented_options(secs.get("OPTIONS", [])))

    codes = {value: name for name, value in int_constants("daemon/core/exit_codes.hpp").items()}
    listed = documented_statuses(secs)
    for code, name in sorted(codes.items()):
        check(code in listed, f"exit status {code} ({name}) is documented")
    for code in sorted(listed - set(codes)):
        check(False, f"documented exit status {code} exists in exit_codes.hpp")


def same_value(documented: str, actual: str) -> bool:
    documented = documented.rstrip(".,;)")
    if documented == "empty":
        documented = '""'
    try:
        return float(documented) == float(actual)
    except ValueError:
        return documented.strip('"') == actual.strip('"')


def test_dpengined_toml_5() -> None:
    _, secs = open_page("dpengined.toml.5")
    actual = default_config()
    check(len(actual) >= 10, f"--check-config prints keys ({len(actual)})")
    documented: dict[str, str] = {}
    for sub, term, body in terms(secs.get("OPTIONS", [])):
        m = re.match(r"^([a-z_]+)\s*=", term)
        if not m or not sub:
            continue
        key = f"{sub.strip('[]')}.{m[1]}"
        documented[key] = body
    for key in sorted(actual):
        check(key in documented, f"{key} (from --check-config) is documented")
        if key in documented:
            m = re.search(r"\bDefault (\S+)", documented[key])
            if m:
                check(same_value(m[1], actual[key]), f"{key}: documented default {m[1]} == {actual[key]}")
    for key in sorted(set(documented) - set(actual)):
        check(False, f"documented key {key} exists in --check-config")


def dpctl_help() -> tuple[set[str], dict[str, str], set[int]]:
    """`dpctl --help`: its commands ("keys generate"), options (flag -> value name) and exit
    statuses."""
    out = run([DPCTL, "--help"]).stdout
    commands, options, statuses = set(), {}, set()
    part = ""
    for line in out.splitlines():
        if re.match(r"^\S.*:$", line):
            part = line
            continue
        if part.startswith("Options"):
            m = re.match(r"^\s+((?:-{1,2}[A-Za-z0-9][A-Za-z0-9-]*\s)+)\s*([A-Z]+)?\s", line + " ")
            if m:
                for flag in m[1].split():
                    options[flag] = m[2] or ""
        elif part.startswith("Exit status"):
            if m := re.match(r"^\s+(\d+)\s", line):
                statuses.add(int(m[1]))
        elif m := re.match(r"^  ([a-z][a-z-]*(?: [a-z][a-z-]*)*)(?=\s|$)", line):
            commands.add(m[1])
    return commands, options, statuses


def test_dpctl_1() -> None:
    _, secs = open_page("dpctl.1")
    out = run([DPCTL, "version"])
    check(out.returncode == 0, "dpctl version exits 0")

    help_commands, help_options, help_statuses = dpctl_help()
    check(len(help_commands) >= 1, f"dpctl --help lists commands ({sorted(help_commands)})")
    documented = set()
    for _, term, _ in terms(secs.get("COMMANDS", [])):
        if m := re.match(r"^([a-z][a-z-]*(?: [a-z][a-z-]*)*)", term):
            documented.add(m[1])
    for command in sorted(help_commands):
        check(command in documented, f"dpctl {command} (from --help) is documented")
    for command in sorted(documented - help_commands):
        check(False, f"documented command dpctl {command} exists in --help")

    check_options(help_options, documented_options(secs.get("OPTIONS", [])), "dpctl ")

    code = set(int_constants(os.path.join("daemon", "core", "dpctl_exit.hpp")).values()) \
        if os.path.exists(os.path.join(SRC, "daemon", "core", "dpctl_exit.hpp")) else help_statuses
    listed = documented_statuses(secs)
    for status in sorted(code | help_statuses):
        check(status in listed, f"dpctl exit status {status} is documented")
    for status in sorted(listed - code - help_statuses):
        check(False, f"documented dpctl exit status {status} exists in the code")


def test_protocol_7() -> None:
    roff, _ = open_page("dpengine-protocol.7")
    text = plain(roff)
    wire_hpp = read(os.path.join(SRC, "daemon", "core", "wire.hpp"))
    wire_fields = read(os.path.join(SRC, "daemon", "core", "wire_fields.hpp"))
    types = re.findall(r'MessageType<(\d+), "(\w+)"', wire_hpp)
    check(len(types) >= 10, f"wire.hpp has message types ({len(types)})")
    for number, name in types:
        check(re.search(rf"^{number}\nT\{{\n{name}\n|^{number}\s+{name}\b|\b{name}\b\s*\({number}\)",
                        text, re.M) is not None or (name in text and f"\n{number}\n" in text),
              f"type {number} {name} is in the page")
    fields = sorted(set(re.findall(r'field\("([a-z_]+)"', wire_fields)))
    check(len(fields) >= 50, f"wire_fields.hpp declares the fields ({len(fields)})")
    for field in fields:
        check(re.search(rf"\b{field}\b", text) is not None, f"field '{field}' is in the page")
    m = re.search(r"protocol_major = (\d+);.*?protocol_minor = (\d+);", wire_hpp, re.S)
    if m:
        check(f"version *{m[1]}.{m[2]}*" in read(os.path.join(SRC, "man", "dpengine-protocol.7.scd")),
              f"the page documents protocol version {m[1]}.{m[2]}")
    codes: set[str] = set()
    for path in ("daemon/head/rank_link.cpp", "daemon/head/node_registry.cpp", "daemon/node/manager.cpp",
                 "daemon/engine/rank.cpp", "daemon/core/wire.hpp"):
        src = read(os.path.join(SRC, path))
        codes |= set(re.findall(r'(?:refuse(?:_logged|_peer)?\((?:[\w.]+,\s*){0,2}|(?:Refused|ErrorReply)\{(?:ReasonCode\()?)"([a-z-]+)"', src))
        # Failure codes the head logs and reports for a rank: fail_rank(slot, reason, "code").
        codes |= set(re.findall(r'(?:fail_rank|rank_failed)\([^;]*?,\s*"([a-z-]+)"\)', src, re.S))
        if path.endswith("wire.hpp"):
            codes |= set(re.findall(r'"(malformed|unknown-type|version-mismatch)"', src))
    check(len(codes) >= 5, f"reason codes found in the code ({len(codes)})", sorted(codes))
    for code in sorted(codes):
        check(re.search(rf"(?<![\w-]){re.escape(code)}(?![\w-])", text) is not None, f"reason code {code} is in the page")


def introspected_interfaces() -> dict[str, dict[str, str]]:
    """--bus-introspect's interfaces: name -> {"Method(in)": out, "Property": type}."""
    out = run([DPENGINED, "--bus-introspect"])
    check(out.returncode == 0, "dpengined --bus-introspect runs", out.stderr)
    interfaces: dict[str, dict[str, str]] = {}
    for iface in ET.fromstring(out.stdout).iter("interface"):
        members: dict[str, str] = {}
        for method in iface.iter("method"):
            args = method.findall("arg")
            ins = "".join(a.get("type", "") for a in args if a.get("direction", "in") == "in")
            members[f"{method.get('name')}({ins})"] = "".join(a.get("type", "") for a in args
                                                            if a.get("direction") == "out")
        for prop in iface.iter("property"):
            members[prop.get("name")] = prop.get("type")
        interfaces[iface.get("name")] = members
    return interfaces


def documented_interfaces(roff: str) -> dict[str, dict[str, str]]:
    """The page's terms, by the interface its section names ("... implements interface
    *org.dpengine1.X*"): "Method(u rank) -> out" and "Property (t, read-only)" lines."""
    interfaces: dict[str, dict[str, str]] = {}
    for name, lines in sections(roff).items():
        m = re.search(r"implements interface (org\.dpengine1\.\w+)", plain(" ".join(lines)))
        if not m:
            continue
        members = interfaces.setdefault(m[1], {})
        for _, term, _ in terms(lines):
            if mm := re.fullmatch(r"(\w+)\(([^)]*)\)(?: -> (\S+))?", term.strip()):
                ins = "".join(arg.split()[0] for arg in mm[2].split(",") if arg.strip())
                members[f"{mm[1]}({ins})"] = mm[3] or ""
            elif mm := re.fullmatch(r"(\w+) \(([^,)]+)[,)].*", term.strip()):
                members[mm[1]] = mm[2]
    return interfaces


def test_bus_5() -> None:
    roff, _ = open_page("org.dpengine1.5")
    actual, documented = introspected_interfaces(), documented_interfaces(roff)
    check(sorted(documented) == sorted(actual), "the page has a section per interface", (sorted(documented), sorted(actual)))
    for iface, members in actual.items():
        for member, signature in members.items():
            check(documented.get(iface, {}).get(member) == signature,
                  f"{iface}: {member} {signature or '-'} is documented", documented.get(iface, {}).get(member))
        for member in set(documented.get(iface, {})) - set(members):
            check(False, f"{iface}: documented {member} exists in --bus-introspect")
    policy = read(os.path.join(SRC, "etc", "polkit-1", "org.dpengine1.policy"))
    text = plain(roff)
    for action in re.findall(r'<action id="([\w.-]+)"', policy):
        check(action in text, f"polkit action {action} is in the page")


def http_backend_examples() -> list[dict]:
    """The [engine] tables of dpengined.toml(5)'s HTTP BACKEND examples, parsed."""
    section = read(os.path.join(SRC, "man", "dpengined.toml.5.scd")).split("# HTTP BACKEND", 1)[1].split("\n# ", 1)[0]
    return [tomllib.loads(block) for block in re.findall(r"```\n(.*?)```", section, re.S)]


def test_http_examples() -> None:
    """Every http backend example is a configuration the daemon accepts, and the
    llama-cpp-python one runs the server as the tests do (llamaserver.server_command)."""
    examples = http_backend_examples()
    check(len(examples) >= 3, f"dpengined.toml(5) has the http backend examples ({len(examples)})")
    with tempfile.TemporaryDirectory() as tmp:
        for example in examples:
            path = os.path.join(tmp, "example.toml")
            with open(path, "w") as f:
                f.write(to_toml(example))
            out = run([DPENGINED, "--config", path, "--check-config"])
            check(out.returncode == 0, f"dpengined --check-config accepts the example {example['engine']['command'][:3]}",
                  out.stderr)
    llama = [e["engine"] for e in examples if "llama_cpp.server" in e["engine"]["command"]]
    check(len(llama) == 1, "one example runs llama-cpp-python's server")
    if not llama:
        return
    example = llama[0]
    expand = {"{model}": example["model"], "{port}": "{port}"}
    shown = [expand.get(w, w) for w in example["command"][1:]]
    tested = llamaserver.server_command("/srv/models/tiny.gguf", "{port}")[1:]
    options = lambda argv: {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
    for option, value in options(shown).items():
        check(options(tested).get(option) == value, f"the example's {option} {value} is the tested one",
              options(tested).get(option))
    check(example["model"] == llamaserver.MODEL_ALIAS, "the example serves the tested model name", example["model"])
    check(example["health_path"] == llamaserver.LIVENESS_PATH, "the example's health_path is the tested one",
          example["health_path"])


def main() -> int:
    if not os.path.isdir(MANDIR) or not all(os.path.exists(os.path.join(MANDIR, p)) for p in PAGES):
        if not shutil.which("scdoc"):
            print("skipped: scdoc is missing, so the man pages were not built (scripts/install-deps installs it)")
            return 0
        print(f"FAIL: the man pages are not in {MANDIR}; build first ({PAGES})")
        return 1
    for page in PAGES:
        check(os.path.exists(os.path.join(MANDIR, page + ".gz")), f"{page}.gz built for installing")
    if shutil.which("mandoc"):
        print("== mandoc -Tlint", flush=True)
        rendered = sorted(p for p in os.listdir(MANDIR) if re.match(r"^.+\.\d$", p))
        for page in rendered:  # every page built from man/*.scd, not only those checked below
            lint(page)
    else:
        print("note: mandoc is missing; lint skipped (scripts/install-deps installs it)")
    return run_parts([test_dpengined_8, test_dpengined_toml_5, test_dpctl_1, test_protocol_7, test_bus_5,
                      test_http_examples])


if __name__ == "__main__":
    sys.exit(main())
