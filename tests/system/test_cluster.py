"""Two Debian 12 virtual machines serving one DP group over CURVE: README example 1, as written
(issue 15).

The head (10.99.48.128, as in the README) and node B (10.99.48.129) share a private Ethernet
segment (vm.Link: qemu's UDP socket network on loopback; nothing else is reached). On both:
`apt install ./dpengine_*.deb`, the README's `dpctl keys generate` (node B's public key
authorized on the head with the README's `cat ... >> authorized_keys`), the README's
`dpengined` lines as ExecStart= drop-ins, node B's `security.head_public_key` in a
dpengined.toml.d drop-in, `systemctl enable dpengined`. Then, each step checking its outcome:

 1. node B is powered off and the head boots again: the head's start job completes (the boot
    reaches running, the unit is active) with STATUS= "2/4 ranks ready (2/2 on this node,
    0/2 on other nodes)", and it serves with ranks 0-1;
 2. node B boots: its ranks 2-3 join, and completions sent at once are served by all four
    ranks, each with the synthetic backend's text;
 3. `kill -9` of rank 2 on node B: node B starts it again and the head routes to it;
 4. `systemctl restart dpengined` on the head: node B's ranks connect to the new head, all four
    ready again;
 5. `systemctl stop dpengined` on node B: a clean stop there; on the head node-b and its ranks
    are `stopped`, not failed, the goodbye is a notice, no error-level line nor "went silent"
    nor "lost node" in its journal (also after several heartbeat timeouts), and it still serves.

Needs what test_operator.py needs; see tests/system/README.md.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
from harness import synthetic_text  # noqa: E402
from systest import (SRC, check, dpctl_json, install_deb, json_or, out, require, timed, unit_prop,  # noqa: E402
                     wait_active, wait_for)
from vm import VM, Link  # noqa: E402
import systest  # noqa: E402

PROMPT = "the quick brown fox"
TOKENS = 16
HEAD_TOML = "[engine]\n# 16 tokens take about 0.8 s: completions sent at once overlap, and spread over the ranks.\nstep_time_ms = 50.0\n"
HEARTBEAT_TIMEOUT = 3.0  # handshake.heartbeat_timeout's default


def readme_example() -> dict[str, str]:
    """The commands of README's "Several nodes" section that this test runs, as written there."""
    with open(os.path.join(SRC, "README.md")) as f:
        text = f.read()
    section = text[text.index("### Several nodes"):]
    section = section[:section.index("\n### ", 4)]
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in section.splitlines()]
    example = section[section.index("# DP=4, ranks 0-1 on the head"):].splitlines()
    commands = {
        "keys": next(line for line in lines if line.startswith("dpctl keys generate")),
        "authorize": next(line for line in lines if line.startswith("cat ") and "authorized_keys" in line),
        "head": re.sub(r"\s+#.*$", "", example[1]).strip(),
        "node_b": re.sub(r"\s+#.*$", "", example[2]).strip(),
    }
    require(commands["head"].startswith("dpengined -dp 4 -dpl 2 ") and
            commands["node_b"].startswith("dpengined --headless -dp 4 -dpl 2 -dpr 2 "),
            "README's example 1 found (head and node B lines)", commands)
    return commands


def flag(command: str, name: str) -> str:
    words = command.split()
    return words[words.index(name) + 1]


def setup_node(vm: VM, hostname: str, address: str) -> None:
    """Host name, and the private NIC's static address (matched by MAC, kept across boots)."""
    network = (f"[Match]\nMACAddress={vm.link.mac}\n\n[Network]\nAddress={address}/24\n"
               "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")
    res = vm.run(f"hostnamectl set-hostname {hostname} && sed -i 's/dpvm/{hostname}/' /etc/hosts && "
                 f"printf %s {shlex.quote(network)} >/etc/systemd/network/10-dpengine-cluster.network && "
                 "networkctl reload && "
                 f"for i in /sys/class/net/*; do [ \"$(cat $i/address)\" = {vm.link.mac} ] && "
                 "networkctl reconfigure ${i##*/}; done; true")
    require(res.returncode == 0, f"{vm.name}: host name and address {address} on the private network", out(res))
    res = wait_for(vm, f"ip -4 -o addr show | grep -F ' {address}/24'", lambda r: r.returncode == 0, 30, interval=1)
    require(res.returncode == 0, f"{vm.name}: {address} is configured", vm.run("ip -o addr; networkctl").stdout)


def reaches(vm: VM, address: str, port: int = 22) -> bool:
    return vm.run(f"python3 -c 'import socket; socket.create_connection((\"{address}\", {port}), 5)'",
                  timeout=30).returncode == 0


def service_dropin(vm: VM, readme_command: str, toml: str) -> None:
    """The README's command line as ExecStart= (systemctl edit's drop-in), and a dpengined.toml.d
    drop-in."""
    exec_start = "/usr/sbin/" + readme_command
    unit = f"[Service]\nExecStart=\nExecStart={exec_start}\n"
    res = vm.run("mkdir -p /etc/systemd/system/dpengined.service.d /etc/dpengine/dpengined.toml.d && "
                 f"printf %s {shlex.quote(unit)} >/etc/systemd/system/dpengined.service.d/50-cluster.conf && "
                 f"printf %s {shlex.quote(toml)} >/etc/dpengine/dpengined.toml.d/50-cluster.toml && "
                 "systemctl daemon-reload && systemctl enable dpengined && "
                 "dpengined --check-config >/dev/null")
    require(res.returncode == 0, f"{vm.name}: drop-ins written, the unit enabled, --check-config accepts them", out(res))


def states(res: subprocess.CompletedProcess) -> dict[int, str]:
    """rank -> state from a `dpctl ranks --json` result ({} when it failed)."""
    return {x["rank"]: x["state"] for x in json_or(res.stdout, [])} if res.returncode == 0 else {}


def rank_states(head: VM) -> dict[int, str]:
    return states(head.run("dpctl ranks --json"))


def wait_ranks(head: VM, want: dict[int, str], what: str, timeout: float = 240.0) -> None:
    res = wait_for(head, "dpctl ranks --json", lambda r: all(states(r).get(k) == v for k, v in want.items()), timeout)
    require(all(states(res).get(k) == v for k, v in want.items()), what, out(res))


def completions(head: VM, count: int) -> list[object]:
    """count completions sent at once from the head's own shell; each one's text, or None."""
    body = json.dumps({"model": "synthetic", "prompt": PROMPT, "seed": 5, "max_tokens": TOKENS})
    res = head.run(f"rm -rf /root/c && mkdir /root/c && for i in $(seq {count}); do "
                   "curl -sS --max-time 60 -H 'Content-Type: application/json' "
                   f"-d {shlex.quote(body)} -o /root/c/$i http://127.0.0.1:8000/v1/completions & done; wait; "
                   "for i in $(seq " + str(count) + "); do cat /root/c/$i; echo; done", timeout=120)
    texts: list[object] = []
    for line in res.stdout.splitlines():
        body = json_or(line, {})
        try:
            texts.append(body["choices"][0]["text"])
        except (KeyError, IndexError, TypeError):
            texts.append(None)
    return texts


def served(head: VM) -> dict[int, int]:
    return {r["rank"]: r["served"] for r in dpctl_json(head, "ranks")}


def step_boot_without_node_b(head: VM, node_b: VM) -> None:
    # Both powered off, the head started alone (a fresh qemu boots faster than a reboot in a
    # running one under TCG).
    node_b.close()
    head.close()
    systest.boot(head)
    started = time.monotonic()
    res = head.run("systemctl is-system-running --wait", timeout=300)
    timed("head: boot to the end of start-up", started)
    check(res.stdout.strip() in ("running", "degraded"), "the head's boot completes while node B is off",
          out(res) + "\n" + head.run("systemctl list-jobs --no-pager").stdout)
    check(head.run("systemctl --failed --no-legend --plain").stdout.strip() == "", "no unit failed on the head",
          head.run("systemctl --failed --no-pager").stdout)
    wait_active(head, "the head's dpengined is active (its start job completed) with node B off", timeout=30)
    status = unit_prop(head, "StatusText")
    check(status == "2/4 ranks ready (2/2 on this node, 0/2 on other nodes)",
          "STATUS= tells the progress of the ranks on other nodes", status)
    wait_ranks(head, {0: "ready", 1: "ready"}, "ranks 0 and 1 ready on the head")
    texts = completions(head, 4)
    check(texts == [synthetic_text(PROMPT, 5, TOKENS)] * 4, "the head serves with its own ranks while node B is off",
          texts)


def step_node_b_joins(head: VM, node_b: VM, node_b_address: str) -> None:
    systest.boot(node_b)
    check(reaches(head, node_b_address), "the head reaches node B over the private network")
    wait_active(node_b, "node B's enabled dpengined is active after its boot", timeout=120)
    wait_ranks(head, {r: "ready" for r in range(4)}, "node B's ranks 2-3 join: all four ready on the head")
    status = unit_prop(head, "StatusText")
    check(status.startswith("4/4 ranks ready"), "the head's STATUS= says 4/4", status)
    nodes = {n["name"]: n for n in dpctl_json(head, "nodes")}
    check(nodes.get("node-b", {}).get("state") == "connected" and nodes["node-b"].get("ranks") == "2-3",
          "dpctl nodes on the head: node-b connected with ranks 2-3", nodes)
    res = node_b.run("dpctl status")
    check(res.returncode == 0 and "Ready ranks: 2/2 on this node" in res.stdout and "disconnected to" not in res.stdout,
          "dpctl status on node B: its own two ranks ready", out(res))
    before = served(head)
    texts = completions(head, 12)
    check(texts == [synthetic_text(PROMPT, 5, TOKENS)] * 12, "12 completions at once, each the synthetic text", texts)
    after = served(head)
    check(all(after.get(r, 0) > before.get(r, 0) for r in range(4)), "completions served by all four ranks",
          f"served before {before}, after {after}")


def step_rank_kill(head: VM, node_b: VM) -> None:
    rank2 = next(r for r in dpctl_json(node_b, "ranks") if r["rank"] == 2)
    require(node_b.run(f"kill -9 {rank2['pid']}").returncode == 0, "kill -9 of rank 2 on node B")
    res = wait_for(node_b, "dpctl ranks --json", lambda r: r.returncode == 0 and any(
        x["rank"] == 2 and x["state"] == "ready" and x["pid"] not in (0, rank2["pid"]) for x in json_or(r.stdout, [])),
        120)
    check(any(x["rank"] == 2 and x["state"] == "ready" and x["pid"] != rank2["pid"] for x in json_or(res.stdout, [])),
          "node B starts rank 2 again", out(res))
    wait_ranks(head, {r: "ready" for r in range(4)}, "all four ranks ready on the head after the kill")
    before = served(head)
    completions(head, 12)
    check(served(head).get(2, 0) > before.get(2, 0), "the head routes to the restarted rank 2")


def step_head_restart(head: VM) -> None:
    started = time.monotonic()
    res = head.run("systemctl restart dpengined", timeout=180)
    require(res.returncode == 0, "systemctl restart dpengined on the head", out(res))
    wait_ranks(head, {r: "ready" for r in range(4)}, "after the head's restart node B's ranks connect again")
    timed("head restart to four ranks ready", started)
    texts = completions(head, 4)
    check(texts == [synthetic_text(PROMPT, 5, TOKENS)] * 4, "the restarted head serves", texts)


def step_node_b_stops(head: VM, node_b: VM) -> None:
    since = head.run("date +%s").stdout.strip()
    res = node_b.run("systemctl stop dpengined", timeout=120)
    check(res.returncode == 0, "systemctl stop dpengined on node B", out(res))
    check(unit_prop(node_b, "Result") == "success", "node B's stop was clean (Result=success)",
          unit_prop(node_b, "Result"))
    wait_ranks(head, {0: "ready", 1: "ready", 2: "stopped", 3: "stopped"}, "the head shows ranks 2-3 stopped",
               timeout=30)
    # A wrong verdict (silence, a lost node) would show within a few heartbeat timeouts.
    time.sleep(3 * HEARTBEAT_TIMEOUT)
    check(rank_states(head) == {0: "ready", 1: "ready", 2: "stopped", 3: "stopped"},
          "ranks 2-3 are still stopped, not failed", rank_states(head))
    nodes = {n["name"]: n["state"] for n in dpctl_json(head, "nodes")}
    check(nodes.get("node-b") == "stopped", "dpctl nodes on the head: node-b stopped", nodes)
    journal = head.run(f"journalctl -u dpengined --no-pager -o cat --since @{since}").stdout
    errors = head.run(f"journalctl -u dpengined --no-pager -o cat -p err --since @{since}").stdout.strip()
    check(errors == "", "no error-level line in the head's journal after node B's orderly stop", errors)
    check("node 'node-b' is stopping" in journal and "went silent" not in journal and "lost node" not in journal,
          "the head's journal has the goodbye, no 'went silent', no 'lost node'", journal[-2000:])
    notices = head.run(f"journalctl -u dpengined --no-pager -o cat -p notice --since @{since}").stdout
    check("node 'node-b' is stopping" in notices, "the goodbye is logged at notice level", notices[-1500:])
    check(unit_prop(head, "ActiveState") == "active", "the head's unit stays active")
    texts = completions(head, 2)
    check(texts == [synthetic_text(PROMPT, 5, TOKENS)] * 2, "the head still serves with ranks 0-1", texts)


def flow(deb: str, image: str, work: str) -> None:
    example = readme_example()
    head_address = flag(example["head"], "--data-parallel-address")
    node_b_address = str(ipaddress.ip_address(head_address) + 1)
    link_head, link_b = Link.pair("52:54:00:99:48:80", "52:54:00:99:48:81")
    head = VM(image, os.path.join(work, "head"), name="head", link=link_head)
    node_b = VM(image, os.path.join(work, "node-b"), name="node-b", link=link_b)
    systest.boot(head, node_b)
    for vm, hostname, address in ((head, "head", head_address), (node_b, "node-b", node_b_address)):
        install_deb(vm, deb)
        setup_node(vm, hostname, address)
    require(reaches(node_b, head_address), f"node B reaches the head at {head_address}")

    # Keys as the README makes them: a pair on every node, node B's public key authorized on
    # the head.
    res = node_b.run(example["keys"])
    require(res.returncode == 0, f"node B: {example['keys']}", out(res))
    res = head.run(example["keys"].replace("node-b", "head"))
    require(res.returncode == 0, "the head: its own key pair", out(res))
    node_b_pub = node_b.run("cat /etc/dpengine/keys/node.key.pub").stdout
    res = head.ssh(["sh", "-c", "cat >/root/node-b.key.pub"], input=node_b_pub)
    require(res.returncode == 0, "node B's public key copied to the head", out(res))
    res = head.run(f"cd /root && {example['authorize']}")
    require(res.returncode == 0, f"the head: {example['authorize']}", out(res))
    head_public_key = head.run("cut -d' ' -f1 /etc/dpengine/keys/node.key.pub").stdout.strip()
    require(len(head_public_key) == 40, "the head's public key (40 Z85 characters)", head_public_key)

    service_dropin(head, example["head"], HEAD_TOML)
    service_dropin(node_b, example["node_b"], f'[security]\nhead_public_key = "{head_public_key}"\n')

    step_boot_without_node_b(head, node_b)
    step_node_b_joins(head, node_b, node_b_address)
    step_rank_kill(head, node_b)
    step_head_restart(head)
    step_node_b_stops(head, node_b)


if __name__ == "__main__":
    systest.main(flow)
