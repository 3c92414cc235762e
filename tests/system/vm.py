"""A Debian 12 virtual machine for the system tests, booted with qemu and driven over ssh.

    with VM(image_dir, workdir) as vm:      # boots, waits for ssh
        vm.run("systemctl is-system-running --wait")
        vm.copy_in("dpengine_1.0.0-1_amd64.deb", "/root/")
    # qemu is gone here, whatever happened inside

image_dir comes from tests/system/build-image (disk.img, vmlinuz, initrd.img). The disk is
used through a qcow2 overlay in workdir, so the cached image stays as built. qemu's user
network runs with restrict=on (the guest reaches nothing outside) and forwards one free
loopback port to the guest's ssh. Each VM makes its own ed25519 key and hands the public half
to the guest on the kernel command line (the image's dpengine-test-key.service authorizes it).

A second NIC on a private network between VMs: Link(mac, local_port, remote_port), qemu's
point-to-point UDP socket network on loopback; two VMs with mirrored ports share an Ethernet
segment that nothing else reaches, and either may stop and start again on its own.

Accelerator: DPENGINE_VM_ACCEL=kvm, tcg or auto (the default): KVM where /dev/kvm is usable and
a guest's kernel starts under it within 10 s, else TCG (nested KVM on the CI machines aborts
qemu or stalls the guest; the first VM of a run finds out, the others follow). Everything is
bounded in time; qemu is killed in close() if it does not power off by itself.
"""

from __future__ import annotations

import glob
import os
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass

SSH_OPTIONS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=6"]


def free_loopback_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Link:
    """The VM's end of a private Ethernet segment: its NIC's MAC address, and the loopback UDP
    ports its qemu sends from and to."""
    mac: str
    local_port: int
    remote_port: int

    @staticmethod
    def pair(mac_a: str, mac_b: str) -> tuple["Link", "Link"]:
        a, b = free_loopback_port(socket.SOCK_DGRAM), free_loopback_port(socket.SOCK_DGRAM)
        return Link(mac_a, a, b), Link(mac_b, b, a)


class VMError(Exception):
    pass


class VM:
    def __init__(self, image_dir: str, workdir: str, memory_mib: int = 1536, cpus: int = 2,
                 boot_timeout: float = 300.0, name: str = "vm", link: Link | None = None):
        self.name = name
        self.link = link
        self.image_dir = image_dir
        self.workdir = workdir
        self.memory_mib = memory_mib
        self.cpus = cpus
        self.boot_timeout = boot_timeout
        self.console_log = os.path.join(workdir, "console.log")
        self.key = os.path.join(workdir, "id_ed25519")
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.boot_seconds = 0.0

    # ---- lifecycle ----

    def __enter__(self) -> "VM":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        os.makedirs(self.workdir, exist_ok=True)
        if not os.path.exists(self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dpengine-system-test", "-f", self.key],
                           check=True, timeout=30)
        with open(self.key + ".pub") as f:
            pub = f.read().split()[1]
        # Made at the first start; a VM started again after close() boots the same disk.
        overlay = os.path.join(self.workdir, "overlay.qcow2")
        if not os.path.exists(overlay):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
                            os.path.join(self.image_dir, "disk.img"), overlay], check=True, timeout=60)
        self.port = free_loopback_port()
        started = time.monotonic()
        accel = os.environ.get("DPENGINE_VM_ACCEL", "auto")
        if accel == "auto":
            accel = "kvm" if VM.kvm_runs_guests is not False and os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
            if accel == "kvm" and not self.launch_kvm_probed(pub, overlay):
                accel = "tcg"
        if self.proc is None:
            self.launch(accel, pub, overlay)
        self.wait_for_ssh(self.boot_timeout)
        self.boot_seconds = time.monotonic() - started

    # Whether KVM ran a guest here (None: not tried yet). Nested KVM on the CI machines either
    # aborts qemu at once or stops the guest before its kernel prints a line.
    kvm_runs_guests: bool | None = None
    KVM_PROBE_SECONDS = 10.0

    def launch_kvm_probed(self, pub: str, overlay: str) -> bool:
        """Starts qemu with KVM, unless KVM has failed here before; keeps it if the kernel's first
        line reaches the console in time, else stops it. Returns whether it is running."""
        self.launch("kvm", pub, overlay)
        if VM.kvm_runs_guests:
            return True
        deadline = time.monotonic() + self.KVM_PROBE_SECONDS
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with open(self.console_log, errors="replace") as f:
                    if "Linux version" in f.read():
                        VM.kvm_runs_guests = True
                        return True
            except FileNotFoundError:  # qemu has not opened it yet
                pass
            time.sleep(0.2)
        VM.kvm_runs_guests = False
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None
        print(f"{self.name}: KVM does not run a guest here (see qemu.log); using TCG", flush=True)
        return False

    def launch(self, accel: str, pub: str, overlay: str) -> None:
        tcg = accel == "tcg"
        cmd = ["qemu-system-x86_64",
               # TCG: one host thread per vCPU (multi-threaded TCG).
               "-accel", "tcg,thread=multi" if tcg else accel, "-m", str(self.memory_mib), "-smp", str(self.cpus),
               "-cpu", "max" if tcg else "host",
               # qboot (in qemu-system-data): a small firmware that boots -kernel directly and
               # needs no seabios package.
               "-bios", "qboot.rom",
               # No default VGA, NIC or drives: less for TCG to emulate and the guest to probe.
               "-nodefaults", "-display", "none", "-monitor", "none", "-serial", f"file:{self.console_log}",
               "-kernel", os.path.join(self.image_dir, "vmlinuz"),
               "-initrd", os.path.join(self.image_dir, "initrd.img"),
               "-append", f"console=ttyS0 root=/dev/vda rw panic=-1 dpengine.ssh_key={pub}",
               "-drive", f"file={overlay},if=virtio,format=qcow2,cache=unsafe",
               "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22",
               "-device", "virtio-net-pci,netdev=n0,romfile=",
               "-device", "virtio-rng-pci"]
        if self.link is not None:
            cmd += ["-netdev", f"socket,id=n1,udp=127.0.0.1:{self.link.remote_port},"
                               f"localaddr=127.0.0.1:{self.link.local_port}",
                    "-device", f"virtio-net-pci,netdev=n1,mac={self.link.mac},romfile="]
        with open(os.path.join(self.workdir, "qemu.log"), "a") as log:
            log.write(f"---- {accel}: {shlex.join(cmd)}\n")
            log.flush()
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_for_ssh(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise VMError(f"qemu exited while booting; console:\n{self.console_tail()}")
            try:
                res = self.ssh(["true"], timeout=20)
                if res.returncode == 0:
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(2)
        raise VMError(f"no ssh within {timeout:.0f} s; console:\n{self.console_tail()}")

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.ssh(["systemctl", "poweroff"], timeout=15)
            except subprocess.TimeoutExpired:
                pass
            self.drop_connections()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def console_tail(self, lines: int = 40) -> str:
        try:
            with open(self.console_log, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no console log)"

    # ---- commands ----

    def shared_connection(self) -> list[str]:
        """ssh options that reuse one connection per user: under TCG a new connection's key
        exchange takes about 3 s, a command over an open one about 0.2 s."""
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.workdir}/ssh-%r-%p", "-o", "ControlPersist=300"]

    def drop_connections(self) -> None:
        """Ends the shared connections (before the guest goes down: a command sent over a
        connection to a guest that is gone would wait for ServerAlive to give up)."""
        for path in glob.glob(os.path.join(self.workdir, "ssh-*")):
            user, port = os.path.basename(path).split("-")[1:3]
            subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "exit", "-p", port, f"{user}@127.0.0.1"],
                           capture_output=True, timeout=10)

    def ssh(self, argv: list[str], user: str = "root", timeout: float = 120.0, input: str | None = None
            ) -> subprocess.CompletedProcess:
        cmd = ["ssh", *SSH_OPTIONS, *self.shared_connection(), "-i", self.key, "-p", str(self.port), f"{user}@127.0.0.1", "--",
               shlex.join(argv)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)

    def run(self, script: str, user: str = "root", timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Runs a shell script in the guest as user (over ssh); returns the completed process."""
        return self.ssh(["sh", "-c", script], user=user, timeout=timeout)

    def copy_in(self, local: str, remote: str, timeout: float = 120.0) -> None:
        subprocess.run(["scp", *SSH_OPTIONS, *self.shared_connection(), "-i", self.key, "-P", str(self.port), local, f"root@127.0.0.1:{remote}"],
                       check=True, capture_output=True, timeout=timeout)

    def reboot(self, timeout: float | None = None) -> float:
        """Reboots the guest (qemu stays, the guest restarts); returns seconds until ssh answers."""
        boot_id = self.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()
        started = time.monotonic()
        try:
            self.ssh(["systemctl", "reboot"], timeout=15)
        except subprocess.TimeoutExpired:
            pass
        deadline = started + (timeout or self.boot_timeout)
        while time.monotonic() < deadline:
            self.drop_connections()  # the next command connects anew, to whichever boot answers
            self.wait_for_ssh(deadline - time.monotonic())
            try:
                if self.run("cat /proc/sys/kernel/random/boot_id", timeout=20).stdout.strip() not in ("", boot_id):
                    return time.monotonic() - started
            except subprocess.TimeoutExpired:
                pass
            time.sleep(1)
        raise VMError("the guest did not come back after reboot")
