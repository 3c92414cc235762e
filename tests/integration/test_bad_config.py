"""Acceptance 5 (configuration): bad configs and flags are refused before anything starts.

Each bad config is run with `dpengined --config F --check-config` and then without
--check-config: both must exit non-zero at once (78 for config errors, 2 for bad flags) with a
message that says what is wrong (file and line for file errors, both values for conflicts),
create no runtime directory and leave no process behind. Warnings (unknown keys) do not stop
--check-config; --strict and daemon.strict turn them into errors. Start-up failures after
validation (HTTP port taken, engine program missing, runtime directory locked or unusable)
exit 1 without leaving a rank behind. A valid config with --check-config prints the effective
config as TOML (flags > drop-ins > file > defaults) and exits 0; that output reads back to itself.
"""

import os
import shutil
import socket
import tempfile
import tomllib
import uuid

from harness import (HOST, Daemon, check, check_eq, check_in, expect, sockets_under, free_port, log,
                     run_dpengined, run_test, slow_factor, tail, write_config)

EX_USAGE, EX_CONFIG, EX_FAILURE = 2, 78, 1

RUNTIME = '[daemon]\nruntime_directory = "@RUNTIME@"\n'

# Configs refused with EX_CONFIG: (the file, what the error says ("{path}": the file's path),
# what is wrong).
BAD_CONFIGS = [
    ('# comment\n[data_parallel]\n\nsize = "four"\n\n' + RUNTIME,
     ['{path}:4: data_parallel.size: expected an integer from 1 to 65536, got "four"'],
     "wrong type (string for an integer)"),
    ('[engine]\nstep_time_ms = "fast"\n' + RUNTIME, ["{path}:2: engine.step_time_ms: expected a number"],
     "wrong type (string for a number)"),
    ('[daemon]\nstrict = "yes"\nruntime_directory = "@RUNTIME@"\n', ["{path}:2: daemon.strict: expected true or false"],
     "wrong type (string for a boolean)"),
    ("[frontend]\nport = 70000\n" + RUNTIME, ["{path}:2: frontend.port: expected an integer from 1 to 65535, got 70000"],
     "out of range"),
    ("[frontend]\nidle_timeout = -1\n" + RUNTIME,
     ["{path}:2: frontend.idle_timeout: expected a number greater than 0, got -1"], "negative timeout"),
    ("[data_parallel\nsize = 2\n", ["{path}:1:"], "TOML syntax error (file and line)"),
    ("[data_parallel]\nsize = 2\nsize_local = 3\n" + RUNTIME, ["data_parallel.size_local (3)", "data_parallel.size (2)"],
     "size_local > size (both values)"),
    ("[data_parallel]\nsize = 2\nstart_rank = 2\n" + RUNTIME, ["data_parallel.start_rank (2)", "data_parallel.size (2)"],
     "start_rank out of range"),
    ("[data_parallel]\nsize = 4\nsize_local = 2\nrpc_port = 0\n" + RUNTIME, ["data_parallel.rpc_port must not be 0"],
     "rpc_port 0 with remote ranks"),
    ('[node]\nrole = "headless"\n[data_parallel]\nsize = 4\n' + RUNTIME, ["headless node needs data_parallel.size_local"],
     "headless node without size_local"),
    ('[node]\nrole = "tail"\n' + RUNTIME, ['{path}:2: node.role: expected "head" or "headless"'], "bad role"),
    ('[engine]\nbackend = "cuda-nope"\n' + RUNTIME, ["unknown backend 'cuda-nope'"], "unknown backend"),
]


class Scratch:
    """A temp directory for config files; each config gets a runtime directory that must not
    come into existence (nothing may start for a bad config)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="dpe-badcfg-")
        self.n = 0

    def config(self, text: str, name: str | None = None) -> tuple[str, str]:
        self.n += 1
        runtime = os.path.join(self.dir, f"run{self.n}")
        text = text.replace("@RUNTIME@", runtime)
        return write_config(self.dir, text, name or f"c{self.n}.toml"), runtime


def run_bad(path: str, runtime: str, args: list, rc: int, needles: list, what: str, also_run: bool = True) -> str:
    """Runs --check-config (and, when also_run, a real start) and checks the refusal."""
    tag = uuid.uuid4().hex
    r = run_dpengined(["--config", path, "--check-config", *args], timeout=15, tag=tag)
    log(f"{what}: exit {r.returncode}: {r.stderr.strip()}")
    check_eq(r.returncode, rc, f"{what}: --check-config exit status")
    for n in needles:
        check_in(n, r.stderr, f"{what}: message")
    check(r.stdout == "", f"{what}: nothing printed on stdout", r.stdout)
    if also_run:
        r2 = run_dpengined(["--config", path, *args], timeout=15, tag=tag)
        check_eq(r2.returncode, rc, f"{what}: exit status without --check-config")
        check(r2.elapsed < 3 * slow_factor(), f"{what}: refused at once ({r2.elapsed:.2f} s)")
        for n in needles:
            check_in(n, r2.stderr, f"{what}: message without --check-config")
        check(not os.path.exists(runtime), f"{what}: no runtime directory was created (nothing started)")
    check(not r.leftovers and not (also_run and r2.leftovers), f"{what}: no process left behind")
    return r.stderr


def valid_config_tests(s: Scratch) -> None:
    log("valid config with --check-config:")
    port = free_port()
    path, runtime = s.config(f'[data_parallel]\nsize = 3\n\n[frontend]\nhost = "127.0.0.1"\nport = {port}\n\n'
                             f'[engine]\nstep_time_ms = 1.5\n\n[daemon]\nruntime_directory = "@RUNTIME@"\n', "valid.toml")
    os.mkdir(path + ".d")
    write_config(path + ".d", "[engine]\nstep_time_ms = 4.0\nmax_batch = 7\n", "10-engine.toml")
    write_config(path + ".d", "[engine]\nmax_batch = 9\n", "20-engine.toml")
    write_config(path + ".d", "[engine]\nmax_batch = 1000\n", "30-not-toml.conf")  # ignored: not *.toml
    tag = uuid.uuid4().hex
    r = run_dpengined(["--config", path, "--check-config", "--port", str(port + 1), "my-model"], tag=tag)
    check_eq(r.returncode, 0, "exit status")
    check(r.stderr == "", "no warnings", r.stderr)
    try:
        eff = tomllib.loads(r.stdout)
    except tomllib.TOMLDecodeError as e:
        check(False, "the output is TOML", f"{e}\n{r.stdout}")
    want = {"node", "data_parallel", "frontend", "engine", "handshake", "daemon"}
    check(want <= set(eff), f"the sections {sorted(want)} are printed", sorted(eff))
    check_eq(eff["data_parallel"]["size"], 3, "data_parallel.size (file)")
    check_eq(eff["data_parallel"]["size_local"], 3, "data_parallel.size_local (filled in: all ranks on a head)")
    check_eq(eff["data_parallel"]["start_rank"], 0, "data_parallel.start_rank (default)")
    check_eq(eff["frontend"]["port"], port + 1, "frontend.port (--port overrides the file)")
    check_eq(eff["frontend"]["host"], "127.0.0.1", "frontend.host (file)")
    check_eq(eff["engine"]["step_time_ms"], 4.0, "engine.step_time_ms (drop-in overrides the file)")
    check_eq(eff["engine"]["max_batch"], 9, "engine.max_batch (later drop-in wins, non-.toml ignored)")
    check_eq(eff["engine"]["model"], "my-model", "engine.model (the MODEL argument)")
    check_eq(eff["engine"]["default_max_tokens"], 16, "engine.default_max_tokens (default)")
    check_eq(eff["node"]["role"], "head", "node.role (default)")
    check(eff["node"]["name"] != "", "node.name filled in (host name)")
    check_eq(eff["daemon"]["runtime_directory"], runtime, "daemon.runtime_directory")
    check(not os.path.exists(runtime), "--check-config created no runtime directory")
    check(not r.leftovers, "--check-config started nothing")

    again = write_config(s.dir, r.stdout, "effective.toml")
    r2 = run_dpengined(["--config", again, "--check-config"])
    check(r2.returncode == 0 and r2.stdout == r.stdout, "the printed config reads back to the same config",
          (r2.returncode, r2.stderr))

    r = run_dpengined(["--help"])
    check(r.returncode == 0 and "--check-config" in r.stdout and "--data-parallel-size" in r.stdout, "--help")
    r = run_dpengined(["--version"])
    check(r.returncode == 0 and r.stdout.startswith("dpengined "), "--version", r.stdout)


def main() -> None:
    s = Scratch()
    listener = None
    try:
        valid_config_tests(s)

        log("unknown keys:")
        text = '[engine]\nmodle = "x"\n\n[daemon]\nruntime_directory = "@RUNTIME@"\n'
        path, runtime = s.config(text)
        r = run_dpengined(["--config", path, "--check-config"])
        check_eq(r.returncode, 0, "unknown key: only a warning, --check-config exit status")
        check_in(f"{path}:2: unknown key 'engine.modle' (ignored); did you mean 'engine.model'?", r.stderr,
                 "unknown key: the warning (file, line, suggestion)")
        check_in("dpengined: warning:", r.stderr, "unknown key: it is a warning")
        check(tomllib.loads(r.stdout)["engine"]["model"] == "synthetic", "unknown key: the config still prints")
        run_bad(path, runtime, ["--strict"], EX_CONFIG,
                [f"{path}:2: unknown key 'engine.modle'", "strict mode is on", "did you mean 'engine.model'?"],
                "unknown key with --strict")
        path, runtime = s.config('[daemon]\nstrict = true\nruntime_directory = "@RUNTIME@"\n\n[engine]\nmodle = "x"\n')
        run_bad(path, runtime, [], EX_CONFIG, [f"{path}:6: unknown key 'engine.modle'", "strict mode is on"],
                "unknown key with daemon.strict")
        path, runtime = s.config('[bogus]\na = 1\n\n[daemon]\nruntime_directory = "@RUNTIME@"\n')
        run_bad(path, runtime, ["--strict"], EX_CONFIG, [f"{path}:1: unknown section '[bogus]'"],
                "unknown section with --strict")

        log("wrong types and ranges, inconsistent values:")
        for text, needles, what in BAD_CONFIGS:
            path, runtime = s.config(text)
            run_bad(path, runtime, [], EX_CONFIG, [n.format(path=path) for n in needles], what)
        missing = os.path.join(s.dir, "does-not-exist.toml")
        run_bad(missing, os.path.join(s.dir, "none"), [], EX_CONFIG, [f"cannot read {missing}"], "missing config file")

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind((HOST, 0))
        listener.listen(1)
        busy = listener.getsockname()[1]
        path, runtime = s.config(f'[data_parallel]\nsize = 4\nsize_local = 2\naddress = "127.0.0.1"\nrpc_port = {busy}\n'
                                 '[daemon]\nruntime_directory = "@RUNTIME@"\n')
        run_bad(path, runtime, [], EX_CONFIG, [f"data_parallel.rpc_port {busy} on 127.0.0.1 is already in use"],
                "rpc port already in use")

        log("addresses:")
        for key, value in (("data_parallel.address", "10.0.0.300"), ("data_parallel.address", "not an address!"),
                           ("frontend.host", "[::1"), ("frontend.host", "")):
            section, name = key.split(".")
            path, runtime = s.config(f'[{section}]\n{name} = "{value}"\n[daemon]\nruntime_directory = "@RUNTIME@"\n')
            run_bad(path, runtime, [], EX_CONFIG, [f"{key}: '{value}' is not an IPv4/IPv6 address or host name"],
                    f"unparsable {key} {value!r}")

        log("command-line flags:")
        path, runtime = s.config(f'[frontend]\nhost = "127.0.0.1"\nport = {free_port()}\n[daemon]\nruntime_directory = "@RUNTIME@"\n')
        flag_cases = [
            (["--frobnicate"], ["unknown option '--frobnicate'", "dpengined --help"], "unknown flag"),
            (["--port", "abc"], ["option '--port': expected an integer from 1 to 65535, got 'abc'"], "bad flag value"),
            (["--port=0"], ["option '--port': expected an integer from 1 to 65535, got '0'"], "bad flag value (--flag=value)"),
            (["-dp", "many"], ["option '-dp': expected an integer from 1 to 65536, got 'many'"], "bad short flag value"),
            (["--step-time-ms", "-3"], ["option '--step-time-ms'"], "negative flag value"),
            (["--port"], ["option '--port' needs a value"], "flag without its value"),
            (["--strict=yes"], ["option '--strict' takes no value"], "value for a switch"),
            (["one", "two"], ["only one argument, the model"], "two positional arguments"),
            (["--model", "a", "b"], ["the model is given twice"], "model twice"),
        ]
        for args, needles, what in flag_cases:
            run_bad(path, runtime, args, EX_USAGE, needles, what)
        path2, runtime2 = s.config('[data_parallel]\nsize = 2\n[daemon]\nruntime_directory = "@RUNTIME@"\n')
        run_bad(path2, runtime2, ["--data-parallel-size-local", "3"], EX_CONFIG,
                ["data_parallel.size_local (3)", "data_parallel.size (2)"], "flag value that conflicts with the file")

        log("start-up failures after validation (exit 1, nothing left behind):")
        taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            taken.bind((HOST, 0))
            taken.listen(1)
            http_port = taken.getsockname()[1]
            path, runtime = s.config(f'[data_parallel]\nsize = 2\n[frontend]\nhost = "127.0.0.1"\nport = {http_port}\n'
                                     '[daemon]\nruntime_directory = "@RUNTIME@"\n')
            os.mkdir(runtime)  # as systemd's RuntimeDirectory= would have it: the daemon does not own it
            tag = uuid.uuid4().hex
            r = run_dpengined(["--config", path], tag=tag)
            check_eq(r.returncode, EX_FAILURE, "HTTP port in use: exit status")
            check_in(f"cannot listen on 127.0.0.1 port {http_port}", r.stderr, "HTTP port in use: message")
            check("rank 0 started" not in r.stderr, "HTTP port in use: no rank was started", tail(r.stderr))
            check(not r.leftovers, "HTTP port in use: no process left behind")
            expect(not sockets_under(runtime), "HTTP port in use: no socket file left in the (pre-existing) runtime directory",
                   sockets_under(runtime))
        finally:
            taken.close()

        path, runtime = s.config(f'[data_parallel]\nsize = 2\n[frontend]\nhost = "127.0.0.1"\nport = {free_port()}\n'
                                 f'[daemon]\nruntime_directory = "@RUNTIME@"\nengine_program = "{s.dir}/no-such-program"\n')
        os.mkdir(runtime)
        tag = uuid.uuid4().hex
        r = run_dpengined(["--config", path], tag=tag)
        check_eq(r.returncode, EX_FAILURE, "missing engine program: exit status")
        check_in(f"cannot run the engine program {s.dir}/no-such-program", r.stderr, "missing engine program: message")
        check(not r.leftovers, "missing engine program: no process left behind")
        expect(not sockets_under(runtime), "missing engine program: no socket file left in the runtime directory",
               sockets_under(runtime))

        path, runtime = s.config(f'[frontend]\nhost = "127.0.0.1"\nport = {free_port()}\n'
                                 '[daemon]\nruntime_directory = "/proc/self/no-such-dir"\n')
        r = run_dpengined(["--config", path])
        check_eq(r.returncode, EX_FAILURE, "unusable runtime directory: exit status")
        check_in("cannot create runtime directory /proc/self/no-such-dir", r.stderr, "unusable runtime directory: message")

        with Daemon({"data_parallel": {"size": 1}}, name="holder") as holder:
            holder.wait_ready(30)
            path, runtime = s.config(f'[frontend]\nhost = "127.0.0.1"\nport = {free_port()}\n'
                                     f'[daemon]\nruntime_directory = "{holder.runtime_dir}"\n')
            tag = uuid.uuid4().hex
            r = run_dpengined(["--config", path], tag=tag)
            check_eq(r.returncode, EX_FAILURE, "runtime directory in use: exit status")
            check_in(f"another dpengined is using the runtime directory {holder.runtime_dir}", r.stderr,
                     "runtime directory in use: message")
            check(not r.leftovers, "runtime directory in use: no process left behind")
            check(holder.running() and os.path.exists(os.path.join(holder.runtime_dir, "rpc.sock")),
                  "the running daemon and its socket are untouched")
            check_eq(holder.stop(), 0, "the running daemon still stops cleanly")
    finally:
        if listener:
            listener.close()
        shutil.rmtree(s.dir, ignore_errors=True)


if __name__ == "__main__":
    run_test(main, timeout=120)
