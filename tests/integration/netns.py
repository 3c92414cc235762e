"""Multi-node pieces for dpengine's integration tests: network namespaces, and what runs in them.

Builds on harness.py (Daemon, HTTP helpers, synthetic_text, run_test) and adds:

  - Network:   the namespaces of one test, named "dpt-<pid>-<tag><node>", on one LAN: a bridge in a
               namespace of its own ("<prefix>sw") and one veth per node ("eth0" in the node,
               "p-<node>" on the bridge). Node N gets 10.213.1.N/24 and fd00:213:1::N/64
               (nodad). Everything is removed by close(), which kills whatever still runs in
               the namespaces; namespaces of earlier runs whose test process is gone are swept
               on the next start. add_nodes() adds a head's namespace and others that reach it.
  - Namespace: one node. run()/popen() run a program inside it (`ip netns exec`);
               entered() moves the *calling thread* into it with setns(2) (ctypes: Debian's
               Python 3.11 has no os.setns), so sockets made there live in the namespace and
               processes started there run in it; call(fn, ...) runs fn that way. For
               fault-tolerance tests: partition()/heal() (iptables -j DROP inside the node),
               and TcpDelayProxy (a user-space TCP relay with a delay, listening in a node).
  - NodeDaemon: harness.Daemon started inside a namespace, with HTTP helpers that connect
               from inside it (the head's HTTP API listens on 127.0.0.1 of its namespace).
  - Keys:      make_key() (dpctl keys generate), fingerprint() (as the daemon computes it),
               write_authorized_keys().
  - Capture:   tcpdump inside a namespace (falls back to an AF_PACKET socket in Python when
               tcpdump is not installed); the captured bytes, to look for plaintext.
  - Wire:      a stdlib-only msgpack encoder/decoder and the message framing of the wire
               protocol (daemon/core/wire.hpp): [major, minor, type, epoch, body].
  - Peer:      a scripted rank written with python3-zmq (another ZeroMQ binding): a DEALER,
               CURVE when given keys (NULL or PLAIN otherwise), that speaks the handshake;
               ServingPeer runs one as a rank in a thread (READY, HEARTBEAT, OUTPUTS).
  - Cluster:   a head and headless nodes with generated keys and config files; each node's
               rank processes are NodeDaemon.ranks() ({rank: pid}; SIGSTOP them to hang one);
               start_ready() starts daemons together and waits until each is ready.
  - Load:      completion_load() (concurrent completions checked against the synthetic
               backend), rank_switches() (evidence that a rank ran engine steps), and
               seed_example() (the seed's two examples, shared by the IPv4 and IPv6 tests).

Every address is in the test's own namespaces: nothing is sent outside them or loopback.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import http.client
import os
import random
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import harness
from harness import (Daemon, TestFailure, build_dir, get, log, post_json, request, slow_factor, wait_until)

# ---------------------------------------------------------------------------------------------
# Entering a namespace from this process

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


def _run(argv: list[str], timeout: float = 20.0, check: bool = True, input: Optional[bytes] = None) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, stdin=None if input is not None else subprocess.DEVNULL, input=input,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    if check and p.returncode != 0:
        raise TestFailure(f"{' '.join(argv)} failed with status {p.returncode}: "
                          f"{p.stderr.decode('utf-8', 'replace').strip()}")
    return p


def tool_available(name: str) -> bool:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin") is not None


def _register(p: subprocess.Popen, remove: bool = False) -> None:
    """Adds a process to harness's list of processes that its run_test backstop kills (when
    harness has one), so that even an overrun test leaves nothing running."""
    lock, procs = getattr(harness, "_registry_lock", None), getattr(harness, "_live_procs", None)
    if lock is None or procs is None:
        return
    with lock:
        (procs.discard if remove else procs.add)(p)


# ---------------------------------------------------------------------------------------------
# Namespaces


class Namespace:
    """One node's network namespace."""

    def __init__(self, network: "Network", short: str, index: int):
        self.network = network
        self.short = short
        self.name = f"{network.prefix}{short}"
        self.index = index  # the host part of its LAN addresses
        self.interface = "eth0"
        self._procs: list[subprocess.Popen] = []

    # addresses on the LAN
    @property
    def ipv4(self) -> str:
        return f"{Network.V4_NET}.{self.index}"

    @property
    def ipv6(self) -> str:
        return f"{Network.V6_NET}::{self.index:x}"

    def address(self, family: str) -> str:
        return self.ipv6 if family == "ipv6" else self.ipv4

    def __repr__(self) -> str:
        return f"Namespace({self.name})"

    # running things inside
    @contextlib.contextmanager
    def entered(self):
        """Moves the calling thread into the namespace for the block. Sockets created (and
        processes started) by this thread meanwhile belong to the namespace; other threads
        are not affected."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            target = os.open(os.path.join(NETNS_DIR, self.name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield self
            finally:
                _setns(own)
        finally:
            os.close(own)

    def call(self, fn: Callable, *args, **kwargs):
        with self.entered():
            return fn(*args, **kwargs)

    def argv(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(self, *cmd: str, timeout: float = 20.0, check: bool = True) -> subprocess.CompletedProcess:
        return _run(self.argv(*cmd), timeout=timeout, check=check)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(["ip", "-n", self.name, *args], check=check)

    def popen(self, cmd: list[str], **kwargs) -> subprocess.Popen:
        """Starts a program inside the namespace in its own session; it is killed by close()."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("start_new_session", True)
        p = subprocess.Popen(self.argv(*cmd), **kwargs)
        self._procs.append(p)
        _register(p)
        return p

    def pids(self) -> list[int]:
        p = _run(["ip", "netns", "pids", self.name], check=False)
        return [int(x) for x in p.stdout.split()]

    def kill_all(self) -> None:
        """Kills every process in the namespace (whoever started it)."""
        for p in self._procs:
            harness.kill_pid_and_group(p.pid)
        for _ in range(3):
            pids = [p for p in self.pids() if p != os.getpid()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for p in self._procs:
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
            _register(p, remove=True)

    # faults, for the tests that need them
    def iptables(self, *args: str, ipv6: bool = False) -> None:
        self.run("ip6tables" if ipv6 else "iptables", "-w", "5", *args)

    def partition(self, peer: "Namespace") -> None:
        """Drops every packet between this node and `peer`, both ways, silently (no RST, no
        ICMP): the connection just goes quiet."""
        for v6, addr in ((False, peer.ipv4), (True, peer.ipv6)):
            self.iptables("-I", "INPUT", "-s", addr, "-j", "DROP", ipv6=v6)
            self.iptables("-I", "OUTPUT", "-d", addr, "-j", "DROP", ipv6=v6)

    def heal(self, peer: "Namespace") -> None:
        for v6, addr in ((False, peer.ipv4), (True, peer.ipv6)):
            self.iptables("-D", "INPUT", "-s", addr, "-j", "DROP", ipv6=v6)
            self.iptables("-D", "OUTPUT", "-d", addr, "-j", "DROP", ipv6=v6)

    # sockets made inside
    def connect_tcp(self, host: str, port: int, timeout: float = 5.0) -> socket.socket:
        with self.entered():
            return socket.create_connection((host, port), timeout=timeout)


class Network:
    """The namespaces of one test on one LAN. Use as a context manager (or call close())."""

    V4_NET = "10.213.1"   # /24
    V6_NET = "fd00:213:1"  # /64 (ULA)

    def __init__(self, tag: str = ""):
        sweep_stale_namespaces()
        self.prefix = f"dpt-{os.getpid()}-{tag}"
        if len(self.prefix) > 40:
            raise ValueError("namespace prefix too long")
        self.nodes: dict[str, Namespace] = {}
        self.switch: Optional[str] = None
        self._closed = False
        self._next_index = 1
        try:
            self.switch = f"{self.prefix}sw"
            _run(["ip", "netns", "add", self.switch])
            _run(["ip", "-n", self.switch, "link", "set", "lo", "up"])
            _run(["ip", "-n", self.switch, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
            _run(["ip", "-n", self.switch, "link", "set", "br0", "up"])
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_node(self, short: str) -> Namespace:
        """A namespace on the LAN, with lo up and eth0 holding 10.213.1.N/24, fd00:213:1::N/64."""
        if short in self.nodes:
            raise ValueError(f"node {short} exists")
        if not re.fullmatch(r"[a-z0-9]{1,10}", short):
            raise ValueError(f"node name {short!r}: 1-10 of [a-z0-9]")
        ns = Namespace(self, short, self._next_index)
        self._next_index += 1
        self.nodes[short] = ns
        _run(["ip", "netns", "add", ns.name])
        ns.ip("link", "set", "lo", "up")
        port = f"p-{short}"
        _run(["ip", "link", "add", ns.interface, "netns", ns.name, "type", "veth",
              "peer", "name", port, "netns", self.switch])
        _run(["ip", "-n", self.switch, "link", "set", port, "master", "br0", "up"])
        ns.ip("addr", "add", f"{ns.ipv4}/24", "dev", ns.interface)
        ns.ip("addr", "add", f"{ns.ipv6}/64", "dev", ns.interface, "nodad")
        ns.ip("link", "set", ns.interface, "up")
        return ns

    def add_nodes(self, first: str, *others: str) -> list[Namespace]:
        """Namespaces `first` (the head, usually) and `others` on the LAN, each of the others
        able to reach `first` when this returns."""
        hub = self.add_node(first)
        spokes = [self.add_node(short) for short in others]
        for ns in spokes:
            self.wait_reachable(ns, hub)
        return [hub, *spokes]

    def wait_reachable(self, a: Namespace, b: Namespace, timeout: float = 10.0) -> None:
        """Waits until `a` can send to `b` over both families (links come up asynchronously):
        a UDP datagram from a to b is received."""
        for family, af in (("ipv4", socket.AF_INET), ("ipv6", socket.AF_INET6)):
            with b.entered():
                rx = socket.socket(af, socket.SOCK_DGRAM)
            with a.entered():
                tx = socket.socket(af, socket.SOCK_DGRAM)
            try:
                rx.bind((b.address(family), 0))
                port = rx.getsockname()[1]
                rx.setblocking(False)
                deadline = time.monotonic() + timeout
                while True:
                    try:
                        tx.sendto(b"ping", (b.address(family), port))
                    except OSError:
                        pass
                    r, _, _ = select.select([rx], [], [], 0.1)
                    if r:
                        rx.recv(16)
                        break
                    if time.monotonic() > deadline:
                        raise TestFailure(f"{a.name} cannot reach {b.name} over {family} within {timeout} s")
            finally:
                rx.close()
                tx.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for ns in self.nodes.values():
            try:
                ns.kill_all()
            except Exception as e:  # noqa: BLE001 - go on removing the rest
                log(f"warning: killing processes in {ns.name}: {e}")
        for name in [ns.name for ns in self.nodes.values()] + ([self.switch] if self.switch else []):
            _run(["ip", "netns", "del", name], check=False)
        left = [n for n in list_namespaces() if n.startswith(self.prefix)]
        if left:
            log(f"warning: namespaces left behind: {left}")


def list_namespaces() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except OSError:
        return []


def sweep_stale_namespaces() -> None:
    """Removes namespaces of earlier test runs whose process is gone (a run killed before it
    could clean up)."""
    for name in list_namespaces():
        m = re.match(r"dpt-(\d+)-", name)
        if not m or harness.pid_alive(int(m.group(1))):
            continue
        for pid in _run(["ip", "netns", "pids", name], check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run(["ip", "netns", "del", name], check=False)


# ---------------------------------------------------------------------------------------------
# A dpengined inside a namespace


class NodeDaemon(Daemon):
    """harness.Daemon, started from inside `ns` (so it and its ranks run there). HTTP helpers
    connect from inside the namespace to the front-end on 127.0.0.1."""

    def __init__(self, ns: Namespace, config: Optional[dict] = None, args: Iterable[str] = (),
                 name: Optional[str] = None, env: Optional[dict] = None):
        super().__init__(config, args=args, env=env, name=name or ns.short)
        self.ns = ns

    def start(self) -> "NodeDaemon":
        with self.ns.entered():
            super().start()
        return self

    # HTTP from inside the namespace
    def request(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> harness.Response:
        return self.ns.call(request, self.port, method, path, body=body, timeout=timeout)

    def post_json(self, path: str, body: Any, timeout: float = 30.0) -> tuple[int, Any]:
        return self.ns.call(post_json, self.port, path, body, timeout=timeout)

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, Any]:
        return self.ns.call(get, self.port, path, timeout=timeout)

    def health(self) -> Optional[dict]:
        try:
            status, body = self.get("/health", timeout=5)
        except (OSError, http.client.HTTPException):
            return None
        return body if isinstance(body, dict) else None

    def ready_ranks(self) -> Optional[int]:
        h = self.health()
        return None if h is None else h.get("ready_ranks")

    def wait_ready_ranks(self, n: int, timeout: float = 30.0, exact: bool = True) -> bool:
        """Waits until /health says `n` ranks are ready (at least n when exact is False)."""
        def ok():
            r = self.ready_ranks()
            return r is not None and (r == n if exact else r >= n)
        return wait_until(ok, timeout * slow_factor(), 0.1) is not None

    def complete(self, prompt: str, max_tokens: int = 16, seed: int = 0, timeout: float = 30.0,
                 model: Optional[str] = None) -> tuple[int, Any]:
        body = {"prompt": prompt, "max_tokens": max_tokens, "seed": seed}
        if model:
            body["model"] = model
        return self.post_json("/v1/completions", body, timeout=timeout)

    def log_lines(self, pattern: str) -> list[re.Match]:
        return list(re.finditer(pattern, self.log_text(), re.M))


# ---------------------------------------------------------------------------------------------
# Keys


def dpctl_path() -> str:
    return os.path.join(build_dir(), "ctl", "dpctl")


@dataclass
class Key:
    path: str      # the secret key file
    node: str
    public: str    # Z85
    secret: str    # Z85
    fingerprint: str

    @property
    def pub_path(self) -> str:
        return self.path + ".pub"


def fingerprint(public_z85: str) -> str:
    """As the daemon computes it: SHA256: + unpadded base64 of the first 12 bytes of the SHA-256
    of the Z85 text."""
    digest = hashlib.sha256(public_z85.encode()).digest()[:12]
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _first_content_line(text: str) -> str:
    for line in text.splitlines():
        t = line.strip()
        if t and not t.startswith("#"):
            return t
    return ""


def make_key(directory: str, node: str) -> Key:
    """`dpctl keys generate DIR/NODE.key --node NODE`; checks what it printed and wrote."""
    path = os.path.join(directory, f"{node}.key")
    p = _run([dpctl_path(), "keys", "generate", path, "--node", node])
    out = p.stdout.decode().strip().splitlines()
    public = out[-1].strip() if out else ""
    with open(path + ".pub") as f:
        pub_words = f.read().split()
    if pub_words[:2] != [public, node]:
        raise TestFailure(f"dpctl keys generate printed {public!r} but {path}.pub holds {pub_words}")
    with open(path) as f:
        secret = _first_content_line(f.read())
    mode = os.stat(path).st_mode & 0o777
    if mode != 0o600:
        raise TestFailure(f"{path} has mode {mode:o}, expected 600")
    fp = fingerprint(public)
    shown = _run([dpctl_path(), "keys", "show", path]).stdout.decode()
    m = re.search(r"Fingerprint:\s*(\S+)", shown)
    if not m or m.group(1) != fp:
        raise TestFailure(f"dpctl keys show says {shown!r}; computed fingerprint {fp}")
    return Key(path, node, public, secret, fp)


def write_authorized_keys(path: str, entries: Iterable[tuple[Key, Optional[str]]]) -> str:
    """entries: (key, "A-B" rank range or None)."""
    lines = ["# written by the test"]
    for key, ranks in entries:
        lines.append(f"{key.public} {key.node}" + (f" ranks={ranks}" if ranks else ""))
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------------------
# Packet capture


class Capture:
    """Captures the packets on a node's interface (TCP `port` only with tcpdump) into a file:
    `ip netns exec NS tcpdump -i IF -w FILE -U -Z root port P`. Without tcpdump, an AF_PACKET
    socket in a thread (in the namespace) records every frame of the interface."""

    def __init__(self, ns: Namespace, directory: str, port: int, interface: Optional[str] = None):
        self.ns = ns
        self.port = port
        self.interface = interface or ns.interface
        self.path = os.path.join(directory, f"capture-{ns.short}-{port}-{int(time.monotonic() * 1000)}.pcap")
        self.errpath = self.path + ".err"
        # DPENGINE_TEST_CAPTURE=af_packet forces the fallback (to test it).
        self.tool = "tcpdump" if tool_available("tcpdump") and os.environ.get("DPENGINE_TEST_CAPTURE") != "af_packet" \
            else "af_packet"
        self.proc: Optional[subprocess.Popen] = None
        self._frames: list[bytes] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.summary = ""

    def start(self, timeout: float = 10.0) -> "Capture":
        if self.tool == "tcpdump":
            with open(self.errpath, "wb") as err:
                self.proc = self.ns.popen(["tcpdump", "-i", self.interface, "-n", "-U", "-Z", "root", "-s", "0",
                                           "-w", self.path, "tcp", "port", str(self.port)],
                                          stdout=subprocess.DEVNULL, stderr=err)
            ok = wait_until(lambda: "listening on" in self._err() or self.proc.poll() is not None, timeout)
            if not ok or self.proc.poll() is not None:
                raise TestFailure(f"tcpdump did not start: {self._err()}")
        else:
            ready = threading.Event()
            self._thread = threading.Thread(target=self._af_packet, args=(ready,), daemon=True)
            self._thread.start()
            if not ready.wait(timeout):
                raise TestFailure("the AF_PACKET capture did not start")
        log(f"  capturing on {self.ns.name}/{self.interface} with {self.tool}"
            + (f" (tcp port {self.port})" if self.tool == "tcpdump" else " (all frames)"))
        return self

    def _err(self) -> str:
        return harness.file_text(self.errpath)

    def _af_packet(self, ready: threading.Event) -> None:
        with self.ns.entered():
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        try:
            s.bind((self.interface, 0))
            s.settimeout(0.1)
            ready.set()
            while not self._stop.is_set():
                try:
                    self._frames.append(s.recv(262144))
                except socket.timeout:
                    continue
        finally:
            s.close()

    def stop(self) -> bytes:
        """Stops the capture and returns the captured bytes (the pcap file, or the frames)."""
        if self.tool == "tcpdump":
            if self.proc and self.proc.poll() is None:
                # Let the last packets reach the file (-U writes per packet) before SIGINT.
                time.sleep(0.3)
                os.kill(self.proc.pid, signal.SIGINT)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    harness.kill_pid_and_group(self.proc.pid)
            self.summary = " ".join(line for line in self._err().splitlines() if "packets" in line)
            with open(self.path, "rb") as f:
                return f.read()
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.summary = f"{len(self._frames)} frames"
        return b"".join(self._frames)

    def frames(self, data: bytes) -> list[bytes]:
        """The link-layer frames in what stop() returned (a pcap file, or joined frames from
        the AF_PACKET fallback, which keeps them in ._frames)."""
        if self.tool != "tcpdump":
            return list(self._frames)
        if len(data) < 24:
            return []
        endian = "<" if data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        out, pos = [], 24
        while pos + 16 <= len(data):
            _sec, _frac, incl, _orig = struct.unpack(endian + "IIII", data[pos:pos + 16])
            out.append(data[pos + 16:pos + 16 + incl])
            pos += 16 + incl
        return out

    def ethertypes(self, data: bytes) -> dict[int, int]:
        """{ethertype: frame count} (0x0800 IPv4, 0x86dd IPv6)."""
        counts: dict[int, int] = {}
        for f in self.frames(data):
            if len(f) >= 14:
                t = struct.unpack(">H", f[12:14])[0]
                counts[t] = counts.get(t, 0) + 1
        return counts

    def packets(self) -> int:
        m = re.search(r"(\d+) packets? captured", self.summary)
        if m:
            return int(m.group(1))
        m = re.search(r"(\d+) frames", self.summary)
        return int(m.group(1)) if m else 0


# ---------------------------------------------------------------------------------------------
# The wire format: msgpack (stdlib only) and message framing


class Bin(bytes):
    """Marks bytes to encode as msgpack bin (plain bytes are encoded as str, unchecked)."""


def mp_pack(v: Any) -> bytes:
    out = bytearray()
    _pack(v, out)
    return bytes(out)


def _pack(v: Any, out: bytearray) -> None:
    if v is None:
        out.append(0xC0)
    elif v is True:
        out.append(0xC3)
    elif v is False:
        out.append(0xC2)
    elif isinstance(v, int):
        if 0 <= v <= 0x7F:
            out.append(v)
        elif -32 <= v < 0:
            out.append(v & 0xFF)
        elif 0 <= v <= 0xFF:
            out += b"\xcc" + struct.pack(">B", v)
        elif 0 <= v <= 0xFFFF:
            out += b"\xcd" + struct.pack(">H", v)
        elif 0 <= v <= 0xFFFFFFFF:
            out += b"\xce" + struct.pack(">I", v)
        elif 0 <= v <= 0xFFFFFFFFFFFFFFFF:
            out += b"\xcf" + struct.pack(">Q", v)
        elif -0x80 <= v:
            out += b"\xd0" + struct.pack(">b", v)
        elif -0x8000 <= v:
            out += b"\xd1" + struct.pack(">h", v)
        elif -0x80000000 <= v:
            out += b"\xd2" + struct.pack(">i", v)
        else:
            out += b"\xd3" + struct.pack(">q", v)
    elif isinstance(v, float):
        out += b"\xcb" + struct.pack(">d", v)
    elif isinstance(v, Bin):
        n = len(v)
        out += (b"\xc4" + struct.pack(">B", n)) if n <= 0xFF else (b"\xc5" + struct.pack(">H", n)) if n <= 0xFFFF \
            else (b"\xc6" + struct.pack(">I", n))
        out += v
    elif isinstance(v, (str, bytes)):
        b = v.encode("utf-8") if isinstance(v, str) else v
        n = len(b)
        if n <= 31:
            out.append(0xA0 | n)
        elif n <= 0xFF:
            out += b"\xd9" + struct.pack(">B", n)
        elif n <= 0xFFFF:
            out += b"\xda" + struct.pack(">H", n)
        else:
            out += b"\xdb" + struct.pack(">I", n)
        out += b
    elif isinstance(v, (list, tuple)):
        n = len(v)
        out += bytes([0x90 | n]) if n <= 15 else (b"\xdc" + struct.pack(">H", n)) if n <= 0xFFFF \
            else (b"\xdd" + struct.pack(">I", n))
        for x in v:
            _pack(x, out)
    elif isinstance(v, dict):
        n = len(v)
        out += bytes([0x80 | n]) if n <= 15 else (b"\xde" + struct.pack(">H", n)) if n <= 0xFFFF \
            else (b"\xdf" + struct.pack(">I", n))
        for k, x in v.items():
            _pack(k, out)
            _pack(x, out)
    else:
        raise TypeError(f"cannot msgpack {type(v).__name__}")


class MsgpackError(ValueError):
    pass


def mp_unpack(data: bytes) -> Any:
    v, pos = _unpack(data, 0, 0)
    if pos != len(data):
        raise MsgpackError(f"{len(data) - pos} trailing bytes")
    return v


def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    if pos + n > len(data):
        raise MsgpackError("truncated")
    return data[pos:pos + n], pos + n


def _unpack(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if depth > 64:
        raise MsgpackError("too deep")
    if pos >= len(data):
        raise MsgpackError("truncated")
    b = data[pos]
    pos += 1
    if b <= 0x7F:
        return b, pos
    if b >= 0xE0:
        return b - 0x100, pos
    if 0xA0 <= b <= 0xBF:
        s, pos = _take(data, pos, b & 0x1F)
        return s.decode("utf-8", "surrogateescape"), pos
    if 0x90 <= b <= 0x9F:
        return _unpack_array(data, pos, b & 0x0F, depth)
    if 0x80 <= b <= 0x8F:
        return _unpack_map(data, pos, b & 0x0F, depth)
    fixed = {0xCC: ">B", 0xCD: ">H", 0xCE: ">I", 0xCF: ">Q", 0xD0: ">b", 0xD1: ">h", 0xD2: ">i", 0xD3: ">q",
             0xCA: ">f", 0xCB: ">d"}
    if b == 0xC0:
        return None, pos
    if b in (0xC2, 0xC3):
        return b == 0xC3, pos
    if b in fixed:
        fmt = fixed[b]
        raw, pos = _take(data, pos, struct.calcsize(fmt))
        return struct.unpack(fmt, raw)[0], pos
    lengths = {0xD9: ">B", 0xDA: ">H", 0xDB: ">I", 0xC4: ">B", 0xC5: ">H", 0xC6: ">I",
               0xDC: ">H", 0xDD: ">I", 0xDE: ">H", 0xDF: ">I"}
    if b in lengths:
        fmt = lengths[b]
        raw, pos = _take(data, pos, struct.calcsize(fmt))
        n = struct.unpack(fmt, raw)[0]
        if b in (0xD9, 0xDA, 0xDB):
            s, pos = _take(data, pos, n)
            return s.decode("utf-8", "surrogateescape"), pos
        if b in (0xC4, 0xC5, 0xC6):
            s, pos = _take(data, pos, n)
            return Bin(s), pos
        if b in (0xDC, 0xDD):
            return _unpack_array(data, pos, n, depth)
        return _unpack_map(data, pos, n, depth)
    raise MsgpackError(f"unsupported type byte 0x{b:02x}")


def _unpack_array(data: bytes, pos: int, n: int, depth: int) -> tuple[list, int]:
    out = []
    for _ in range(n):
        v, pos = _unpack(data, pos, depth + 1)
        out.append(v)
    return out, pos


def _unpack_map(data: bytes, pos: int, n: int, depth: int) -> tuple[dict, int]:
    out = {}
    for _ in range(n):
        k, pos = _unpack(data, pos, depth + 1)
        v, pos = _unpack(data, pos, depth + 1)
        out[k] = v
    return out, pos


# Message types (daemon/core/wire.hpp).
HELLO, CONFIG, REFUSED, READY, REQUEST, ABORT, OUTPUTS, HEARTBEAT, SHUTDOWN, ERROR = range(1, 11)
TYPE_NAMES = {HELLO: "HELLO", CONFIG: "CONFIG", REFUSED: "REFUSED", READY: "READY", REQUEST: "REQUEST",
              ABORT: "ABORT", OUTPUTS: "OUTPUTS", HEARTBEAT: "HEARTBEAT", SHUTDOWN: "SHUTDOWN", ERROR: "ERROR"}
PROTOCOL = (2, 1)  # daemon/core/wire.hpp protocol_major, protocol_minor


@dataclass
class Message:
    type: int
    body: Any
    epoch: int = 0
    major: int = PROTOCOL[0]
    minor: int = PROTOCOL[1]

    @property
    def name(self) -> str:
        return TYPE_NAMES.get(self.type, f"type {self.type}")

    def __repr__(self) -> str:
        return f"{self.name}(v{self.major}.{self.minor}, epoch {self.epoch}) {self.body!r}"


def encode_message(type_: int, body: Any, epoch: int = 0, major: int = PROTOCOL[0], minor: int = PROTOCOL[1]) -> bytes:
    return mp_pack([major, minor, type_, epoch, body])


def decode_message(data: bytes) -> Message:
    v = mp_unpack(data)
    if not isinstance(v, list) or len(v) != 5:
        raise MsgpackError(f"not a 5-element message: {v!r}")
    major, minor, type_, epoch, body = v
    return Message(type_, body, epoch, major, minor)


# ---------------------------------------------------------------------------------------------
# A rank written with python3-zmq


def zmq_module():
    import zmq  # Debian's python3-zmq (the tests run /usr/bin/python3)
    return zmq


class Peer:
    """A DEALER connected to the head's rank endpoint from inside `ns`: CURVE when `key` (the
    client's Key) and `server_key` (the head's public key, Z85) are given, else the NULL
    mechanism (or PLAIN with `plain` = (user, password)). send()/recv() speak the wire format;
    hello() sends a HELLO, register() also waits for the answer."""

    def __init__(self, ns: Namespace, endpoint: str, key: Optional[Key] = None, server_key: Optional[str] = None,
                 name: str = "peer", plain: Optional[tuple[str, str]] = None):
        zmq = zmq_module()
        self.zmq = zmq
        self.ns = ns
        self.name = name
        self.endpoint = endpoint
        self.received: list[Message] = []
        self.events: list[int] = []
        # The context's I/O threads start with its first socket; they inherit this thread's
        # namespace, so every connection of this context is made inside `ns`.
        with ns.entered():
            self.ctx = zmq.Context(1)
            self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IPV6, 1)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 200)
        if key is not None:
            self.sock.curve_serverkey = server_key.encode()
            self.sock.curve_publickey = key.public.encode()
            self.sock.curve_secretkey = key.secret.encode()
        elif plain is not None:
            self.sock.plain_username = plain[0].encode()
            self.sock.plain_password = plain[1].encode()
        self.monitor = self.sock.get_monitor_socket()
        self.sock.connect(endpoint)

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except Exception:  # noqa: BLE001
            pass
        self.monitor.close(0)
        self.sock.close(0)
        self.ctx.term()

    def __enter__(self) -> "Peer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _drain_events(self) -> None:
        while self.monitor.poll(0):
            frames = self.monitor.recv_multipart()
            ev, _value = struct.unpack("=HI", frames[0][:6])
            self.events.append(ev)

    def wait_event(self, event: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._drain_events()
            if event in self.events:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.monitor.poll(min(left, 0.1) * 1000)

    def handshake_succeeded(self, timeout: float = 5.0) -> bool:
        return self.wait_event(self.zmq.EVENT_HANDSHAKE_SUCCEEDED, timeout)

    def send(self, type_: int, body: Any, epoch: int = 0, major: int = PROTOCOL[0], minor: int = PROTOCOL[1]) -> None:
        self.sock.send(encode_message(type_, body, epoch, major, minor))

    def send_raw(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, timeout: float = 5.0) -> Optional[Message]:
        if not self.sock.poll(timeout * 1000):
            return None
        msg = decode_message(self.sock.recv())
        self.received.append(msg)
        return msg

    def recv_type(self, types: Iterable[int], timeout: float = 5.0) -> Optional[Message]:
        """The next message of one of `types` (others are kept in .received), or None."""
        types = set(types)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            m = self.recv(left)
            if m is not None and m.type in types:
                return m

    def hello(self, rank: int, node: str = "scripted", local_rank: int = 0, incarnation: Optional[int] = None,
              dp_size: int = 0, model: str = "", build: str = "python3-zmq-peer", major: int = PROTOCOL[0],
              minor: int = PROTOCOL[1]) -> None:
        body = {"rank": rank, "local_rank": local_rank, "node": node,
                "incarnation": incarnation if incarnation is not None else random.getrandbits(63),
                "build": build, "dp_size": dp_size, "model": model}
        self.send(HELLO, body, 0, major, minor)

    def register(self, rank: int, timeout: float = 10.0, **hello) -> Message:
        """HELLO, then the answer (CONFIG, REFUSED or ERROR). Retries the HELLO until the CURVE
        handshake completed (a DEALER drops nothing, but sending before the connection exists
        only queues)."""
        self.hello(rank, **hello)
        m = self.recv_type((CONFIG, REFUSED, ERROR), timeout)
        if m is None:
            raise TestFailure(f"[{self.name}] no answer to HELLO (rank {rank}) within {timeout} s; events {self.events}")
        return m

    def join(self, rank: int, timeout: float, node: str = "scripted") -> int:
        """Connect, register as `rank` and say READY, checking each step; the epoch."""
        harness.check(self.handshake_succeeded(timeout), f"[{self.name}] connected")
        answer = self.register(rank, timeout=timeout, node=node)
        harness.check(answer.type == CONFIG, f"[{self.name}] the head configured rank {rank}", answer)
        self.send(READY, {"max_batch": 8, "device": "python3-zmq"}, answer.epoch)
        return answer.epoch


class ServingPeer:
    """A Peer that serves as rank `rank` in a thread: HELLO → CONFIG → READY, then HEARTBEAT
    every `heartbeat` s, and for each REQUEST the answer of an engine of its own: it reads the
    client's JSON body, takes `produce(body, id) -> [(text, new_tokens)]` as the completion, and
    answers as an OpenAI server would: one OUTPUTS piece with the whole JSON response, or for
    "stream": true one piece per produced text (status and content type in the first), the
    last carrying data: [DONE] and done. `requests` keeps every REQUEST body as it came."""

    def __init__(self, peer: Peer, rank: int, produce: Callable[[dict, int], list[tuple[str, int]]],
                 heartbeat: float = 1.0, node: str = "scripted", device: str = "python3-zmq"):
        self.peer = peer
        self.rank = rank
        self.produce = produce
        self.heartbeat = heartbeat
        self.node = node
        self.device = device
        self.config: Optional[Message] = None
        self.requests: list[dict] = []
        self.errors: list[str] = []
        self.log: list[Message] = []
        self.progress = 0
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"peer-rank-{rank}", daemon=True)

    def start(self) -> "ServingPeer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _answer(self, request: dict, epoch: int) -> None:
        rid = request["id"]
        body = json.loads(bytes(request["body"]))
        pieces = self.produce(body, rid)
        prompt_tokens = len(str(body.get("prompt", "")).split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                 "total_tokens": prompt_tokens + len(pieces)}
        send = lambda items, running: self.peer.send(OUTPUTS, {"items": items, "running": running, "waiting": 0},
                                                     epoch)
        if not body.get("stream"):
            response = {"id": f"peer-{rid}", "object": "text_completion", "model": body.get("model"),
                        "choices": [{"index": 0, "text": "".join(t for t, _ in pieces), "finish_reason": "length"}],
                        "usage": usage}
            self.progress += 1
            send([[rid, 200, "application/json", Bin(json.dumps(response).encode()), True, len(pieces)]], 0)
            return
        for i, (text, n) in enumerate(pieces):
            last = i == len(pieces) - 1
            chunk = {"id": f"peer-{rid}", "object": "text_completion",
                     "choices": [{"index": 0, "text": text, "finish_reason": "length" if last else None}]}
            event = b"data: " + json.dumps(chunk).encode() + b"\n\n" + (b"data: [DONE]\n\n" if last else b"")
            self.progress += 1
            send([[rid, 200 if i == 0 else 0, "text/event-stream" if i == 0 else "", Bin(event), last, n]],
                 0 if last else 1)

    def _run(self) -> None:
        p = self.peer
        try:
            p.hello(self.rank, node=self.node)
            m = p.recv_type((CONFIG, REFUSED, ERROR), 15 * slow_factor())
            if m is None or m.type != CONFIG:
                self.errors.append(f"handshake: expected CONFIG, got {m!r}")
                return
            self.config = m
            epoch = m.epoch
            p.send(READY, {"max_batch": 8, "device": self.device}, epoch)
            self.ready.set()
            next_hb = time.monotonic() + self.heartbeat
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= next_hb:
                    p.send(HEARTBEAT, {"progress": self.progress, "running": 0, "waiting": 0}, epoch)
                    next_hb = now + self.heartbeat
                m = p.recv(min(0.1, max(0.0, next_hb - time.monotonic())))
                if m is None:
                    continue
                self.log.append(m)
                if m.type == REQUEST:
                    self.requests.append(m.body)
                    self._answer(m.body, epoch)
                    next_hb = time.monotonic() + self.heartbeat
                elif m.type == SHUTDOWN:
                    return
                elif m.type in (REFUSED, ERROR):
                    self.errors.append(f"head sent {m!r}")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{type(e).__name__}: {e}")


def tcp_endpoint(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


# ---------------------------------------------------------------------------------------------
# A user-space TCP relay with a delay (for fault-tolerance tests)


class TcpDelayProxy:
    """Listens on (listen_host, listen_port) inside `ns` and relays each connection to
    (target_host, target_port), delaying every chunk by `delay` seconds in each direction.
    `delay` may be changed while it runs; pause() stops relaying (data is held) until resume().

    `loss` (0-1) models packet loss as TCP shows it to the application: each chunk is "lost"
    with that probability and then reaches the other side `loss_penalty` seconds late (a
    retransmission; 200 ms is Linux's minimum RTO), in order, never dropped for good.
    `lost_chunks` counts them."""

    def __init__(self, ns: Namespace, listen_host: str, listen_port: int, target_host: str, target_port: int,
                 delay: float = 0.0, target_ns: Optional[Namespace] = None, loss: float = 0.0,
                 loss_penalty: float = 0.2, seed: int = 1):
        self.loss = loss
        self.loss_penalty = loss_penalty
        self.lost_chunks = 0
        self.relayed_chunks = 0
        self._random = random.Random(seed)
        self.ns = ns
        self.target_ns = target_ns or ns
        self.target = (target_host, target_port)
        self.delay = delay
        self._run_flag = threading.Event()
        self._run_flag.set()
        self._stop = threading.Event()
        af = socket.AF_INET6 if ":" in listen_host else socket.AF_INET
        with ns.entered():
            self.listener = socket.socket(af, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((listen_host, listen_port))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def pause(self) -> None:
        self._run_flag.clear()

    def resume(self) -> None:
        self._run_flag.set()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = self.target_ns.call(socket.create_connection, self.target, 5)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Reads chunks from `src` and hands them to a writer that sends each one when it is
        due: the delay is latency, not a limit on throughput. A lost chunk holds back those
        after it too (TCP delivers in order)."""
        queue: list[tuple[float, bytes]] = []
        cond = threading.Condition()
        ended = threading.Event()

        def writer() -> None:
            try:
                while True:
                    with cond:
                        while not queue and not ended.is_set() and not self._stop.is_set():
                            cond.wait(0.2)
                        if self._stop.is_set() or (not queue and ended.is_set()):
                            return
                        due, data = queue.pop(0)
                    while time.monotonic() < due and not self._stop.is_set():
                        time.sleep(min(0.05, max(0.0, due - time.monotonic())))
                    while not self._run_flag.wait(0.2):
                        if self._stop.is_set():
                            return
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        w = threading.Thread(target=writer, daemon=True)
        w.start()
        self._threads.append(w)
        src.settimeout(0.2)
        last_due = 0.0
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                self.relayed_chunks += 1
                due = time.monotonic() + self.delay
                if self.loss > 0 and self._random.random() < self.loss:
                    self.lost_chunks += 1
                    due += self.loss_penalty
                last_due = max(due, last_due)
                with cond:
                    queue.append((last_due, data))
                    cond.notify()
        except OSError:
            pass
        finally:
            ended.set()
            with cond:
                cond.notify()

    def close(self) -> None:
        self._stop.set()
        self._run_flag.set()
        self.listener.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# A cluster: a head and headless nodes with keys and configs

MODEL = "synthetic-mn"
RPC_PORT = 13345


class Cluster:
    """Keys and configs for a head and headless nodes on `net`. `family` ("ipv4"/"ipv6")
    selects the address the head binds and the others connect to; `bracketed` writes the IPv6
    address as "[fd00:...]" on the command line."""

    def __init__(self, net: Network, family: str = "ipv4", rpc_port: int = RPC_PORT, insecure: bool = False,
                 engine: Optional[dict] = None, handshake: Optional[dict] = None):
        self.net = net
        self.family = family
        self.rpc_port = rpc_port
        self.insecure = insecure
        self.engine = {"model": MODEL, "step_time_ms": 5, **(engine or {})}
        self.handshake = dict(handshake or {})
        self.tmp = tempfile.mkdtemp(prefix="dpe-mn-")
        self.keys: dict[str, Key] = {}
        self.daemons: list[NodeDaemon] = []
        self.head_ns: Optional[Namespace] = None

    def close(self) -> None:
        for d in self.daemons:
            try:
                d.cleanup(quiet=True)
            except Exception:  # noqa: BLE001
                pass
        if os.environ.get("DPENGINE_TEST_KEEP"):
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for d in self.daemons:
                d.dump_log(4000)
        self.close()

    def check_logs_clean(self) -> None:
        """No sanitizer report (ASan, LSan, UBSan) and no crash in any daemon's log (ranks log
        to their daemon's stderr)."""
        for d in self.daemons:
            harness.check_log_clean(d)

    def key(self, node: str) -> Key:
        if node not in self.keys:
            self.keys[node] = make_key(self.tmp, node)
        return self.keys[node]

    def head_address(self, bracketed: bool = False) -> str:
        a = self.head_ns.address(self.family)
        return f"[{a}]" if bracketed and ":" in a else a

    def endpoint(self) -> str:
        return tcp_endpoint(self.head_ns.address(self.family), self.rpc_port)

    def authorize(self, entries: Iterable[tuple[str, Optional[str]]]) -> str:
        """Writes the head's authorized_keys: (node name, "A-B" or None) for each node."""
        path = os.path.join(self.tmp, "authorized_keys")
        return write_authorized_keys(path, [(self.key(n), r) for n, r in entries])

    def head(self, ns: Namespace, dp: int, dpl: int, authorized: Iterable[tuple[str, Optional[str]]] = (),
             node: str = "head", bracketed: bool = False, config: Optional[dict] = None,
             extra_args: Iterable[str] = (), env: Optional[dict] = None) -> NodeDaemon:
        """The head's daemon (not started): `-dp DP -dpl DPL --data-parallel-address ADDR
        --data-parallel-rpc-port PORT` with [security] from the cluster's keys. `env`: added
        to its environment (e.g. its own system bus)."""
        self.head_ns = ns
        security: dict = {"insecure": True} if self.insecure else {
            "key": self.key(node).path, "authorized_keys": self.authorize(authorized)}
        cfg = harness.merge({"node": {"name": node}, "engine": self.engine, "security": security,
                             **({"handshake": self.handshake} if self.handshake else {})}, config)
        args = ["-dp", str(dp), "-dpl", str(dpl), "--data-parallel-address", self.head_address(bracketed),
                "--data-parallel-rpc-port", str(self.rpc_port), *extra_args]
        d = NodeDaemon(ns, cfg, args, name=node, env=env)
        self.daemons.append(d)
        return d

    def headless(self, ns: Namespace, node: str, dp: int, dpl: int, dpr: Optional[int], bracketed: bool = False,
                 key: Optional[Key] = None, config: Optional[dict] = None, extra_args: Iterable[str] = (),
                 env: Optional[dict] = None) -> NodeDaemon:
        """A headless node's daemon (not started): `--headless -dp DP -dpl DPL -dpr DPR
        --data-parallel-address HEAD --data-parallel-rpc-port PORT`; dpr None: no -dpr (the
        head assigns the node's ranks)."""
        security: dict = {"insecure": True} if self.insecure else {
            "key": (key or self.key(node)).path, "head_public_key": self.key("head").public}
        cfg = harness.merge({"node": {"name": node}, "security": security}, config)
        args = ["--headless", "-dp", str(dp), "-dpl", str(dpl), *(["-dpr", str(dpr)] if dpr is not None else []),
                "--data-parallel-address", self.head_address(bracketed), "--data-parallel-rpc-port",
                str(self.rpc_port), *extra_args]
        d = NodeDaemon(ns, cfg, args, name=node, env=env)
        self.daemons.append(d)
        return d

    @staticmethod
    def start_ready(*daemons: NodeDaemon, timeout: float = 30.0) -> None:
        """Starts the daemons (together: a headless node's ranks wait for the head), waits
        until each is ready, and then until the head has every rank of these daemons ready (its
        READY=1 waits only for its own ranks)."""
        for d in daemons:
            d.start()
        for d in daemons:
            d.wait_ready(timeout)
        wanted = sum(int(d.args[d.args.index("-dpl") + 1]) for d in daemons if "-dpl" in d.args)
        for head in (d for d in daemons if "--headless" not in d.args):
            if not head.wait_ready_ranks(wanted, timeout, exact=False):
                raise TestFailure(f"[{head.name}] fewer than {wanted} ranks ready within {timeout * slow_factor():.0f} s: "
                                  f"{head.health()}")


def ready_lines(head: Daemon) -> dict[int, str]:
    """{rank: node} from the head's "rank N is ready on node X" log lines (the last per rank)."""
    out = {}
    for m in re.finditer(r"rank (\d+) is ready on node (\S+)", head.log_text()):
        out[int(m.group(1))] = m.group(2)
    return out


def wait_log(d: Daemon, pattern: str, timeout: float = 10.0) -> Optional[re.Match]:
    return d.wait_log(pattern, timeout)


# ---------------------------------------------------------------------------------------------
# Load and evidence of work


def raw_tcp_exchange(ns: Namespace, host: str, port: int, data: bytes, timeout: float) -> tuple[bool, bytes, float]:
    """Connects from `ns`, sends `data`, reads until the peer closes. Returns (closed by the
    peer within `timeout`, what it sent, seconds taken)."""
    start = time.monotonic()
    sock = ns.connect_tcp(host, port)
    received = b""
    try:
        sock.settimeout(0.5)
        try:
            sock.sendall(data)
        except OSError:
            return True, received, time.monotonic() - start
        deadline = start + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:  # reset
                return True, received, time.monotonic() - start
            if not chunk:
                return True, received, time.monotonic() - start
            received += chunk
        return False, received, time.monotonic() - start
    finally:
        sock.close()


def refusal_counts(head: NodeDaemon) -> dict[str, int]:
    """{reason code: count} of dpengine_handshake_refusals_total on the head's /metrics."""
    text = head.request("GET", "/metrics").body.decode()
    return {m.group(1): int(float(m.group(2)))
            for m in re.finditer(r'^dpengine_handshake_refusals_total\{reason="([^"]+)"\} (\S+)$', text, re.M)}


def run_concurrently(fn: Callable, items: list, workers: int = 32) -> list:
    """fn(item) for every item on `workers` threads; returns the results in order."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max(1, min(workers, len(items)))) as pool:
        return list(pool.map(fn, items))


def completion_load(head: NodeDaemon, prompts: list[str], max_tokens: int, workers: int = 32,
                    timeout: float = 60.0) -> list[str]:
    """Sends one completion per prompt (seed i) concurrently, from inside the head's namespace,
    and checks each answer against the synthetic backend; returns the problems found."""
    def one(item):
        i, prompt = item
        try:
            status, body = head.complete(prompt, max_tokens=max_tokens, seed=i, timeout=timeout * slow_factor())
        except (OSError, http.client.HTTPException) as e:
            return f"request {i}: {type(e).__name__}: {e}"
        if status != 200:
            return f"request {i}: HTTP {status}: {body}"
        want = harness.synthetic_completion(prompt, i, max_tokens)
        try:
            choice = body["choices"][0]
            got = (choice["text"], choice["finish_reason"], body["usage"]["completion_tokens"],
                   body["usage"]["prompt_tokens"])
        except (KeyError, IndexError, TypeError):
            return f"request {i}: unexpected body {body}"
        if got != (want.text, want.finish_reason, want.completion_tokens, want.prompt_tokens):
            return f"request {i}: got {got}, want {(want.text, want.finish_reason, want.completion_tokens, want.prompt_tokens)}"
        return None
    return [p for p in run_concurrently(one, list(enumerate(prompts)), workers) if p]


def rank_switches(ranks: dict[int, int]) -> dict[int, int]:
    """{rank: voluntary context switches} for {rank: pid}."""
    return {r: harness.voluntary_switches(p) for r, p in ranks.items()}


# ---------------------------------------------------------------------------------------------
# The seed's two examples (shared by the IPv4 and IPv6 tests)


def seed_example(example: int, family: str, bracketed: bool = False, insecure: bool = False,
                 requests: int = 32, max_tokens: int = 192) -> None:
    """Runs seed example 1 (DP=4: ranks 0-1 on the head, 2-3 on node B) or 2 (DP=4: only the
    front-end on the head, ranks 0-3 on node B) in two namespaces and checks that:
      - every rank joins from the node it runs on (the head's "rank N is ready on node X");
      - completions sent to the head's HTTP API (inside its namespace) are all correct, and
        every rank on both nodes ran engine steps for them (voluntary context switches of the
        rank processes: a synthetic rank with step_time_ms sleeps once per step);
      - the capture on node B's veth (tcpdump, port RPC_PORT) holds the handshake and request
        traffic but not the unique marker that every prompt carries; with insecure=True (the
        control) the marker must be visible, proving that the check can fail."""
    check = harness.check
    import uuid
    what = f"seed example {example} over {family}{' (bracketed address)' if bracketed else ''}" + \
        (" with security.insecure = true (control)" if insecure else "")
    log(f"--- {what}")
    tag = f"e{example}{family[-1]}{'i' if insecure else ''}"
    with Network(tag) as net:
        a, b = net.add_nodes("head", "b")
        with Cluster(net, family, insecure=insecure) as c:
            if example == 1:
                head = c.head(a, dp=4, dpl=2, authorized=[("node-b", "2-3")], bracketed=bracketed)
                node_b = c.headless(b, "node-b", dp=4, dpl=2, dpr=2, bracketed=bracketed)
                where = {0: "head", 1: "head", 2: "node-b", 3: "node-b"}
            else:
                head = c.head(a, dp=4, dpl=0, authorized=[("node-b", "0-3")], bracketed=bracketed)
                node_b = c.headless(b, "node-b", dp=4, dpl=4, dpr=0, bracketed=bracketed)
                where = {r: "node-b" for r in range(4)}
            capture = Capture(b, c.tmp, c.rpc_port).start()
            c.start_ready(head, node_b)
            endpoint = c.endpoint()
            check(f"ranks connect to {endpoint}" in head.log_text(), f"the head binds {endpoint}")
            check_eq = harness.check_eq
            check_eq(ready_lines(head), where, "rank → node in the head's \"is ready on node\" log lines")
            check_eq(head.health(), {"status": "ok", "ready_ranks": 4, "ranks": 4}, "/health")
            ranks = {**head.ranks(), **node_b.ranks()}
            check_eq(sorted(ranks), [0, 1, 2, 3], "rank processes (head and node B)")
            check(all(r in node_b.ranks() for r, n in where.items() if n == "node-b"),
                  "node B runs its ranks itself", node_b.ranks())

            marker = f"MARKER{uuid.uuid4().hex}"
            prompts = [f"{marker} prompt number {i} for the data parallel ranks" for i in range(requests)]
            before = rank_switches(ranks)
            t0 = time.monotonic()
            problems = completion_load(head, prompts, max_tokens)
            elapsed = time.monotonic() - t0
            check(not problems, f"{requests} concurrent completions through the head are correct ({elapsed:.1f} s)",
                  "\n".join(problems[:8]))
            work = {r: v - before[r] for r, v in rank_switches(ranks).items()}
            log(f"  voluntary context switches per rank during the load: {work}")
            check(all(v >= max_tokens * 0.75 for v in work.values()),
                  f"every rank on both nodes ran engine steps (>= {int(max_tokens * 0.75)} step sleeps each)", work)

            data = capture.stop()
            log(f"  capture: {len(data)} bytes ({capture.summary})")
            check(capture.packets() >= 20 and len(data) >= 4 * requests * 40,
                  "the capture holds the traffic between the nodes", capture.summary)
            types = capture.ethertypes(data)
            want_type = 0x86DD if family == "ipv6" else 0x0800
            check(types.get(want_type, 0) >= 20 and types.get(want_type, 0) >= 0.9 * sum(types.values()),
                  f"the captured traffic is {family} (ethertype 0x{want_type:04x})",
                  {f"0x{k:04x}": v for k, v in types.items()})
            visible = data.count(marker.encode())
            if insecure:
                check(visible > 0, "control: with security.insecure the prompt marker IS visible on the veth "
                                   "(so the check below can fail)", f"marker seen {visible} times")
            else:
                check(visible == 0 and b"prompt number" not in data,
                      "no prompt text is visible on the veth (CURVE)", f"marker seen {visible} times")
            if not insecure:
                check("CURVE enabled" in head.log_text(), "the head logs that CURVE is enabled")
            else:
                check(re.search(r"warning: security\.insecure is set", head.log_text()),
                      "the head warns about security.insecure")
            code = head.stop()
            check_eq(code, 0, "the head stops cleanly")
            code = node_b.stop()
            check_eq(code, 0, "node B stops cleanly")
            c.check_logs_clean()
