"""Issue 3, test 1 (IPv4): the seed's two multi-node examples in network namespaces.

Example 1: DP=4, ranks 0-1 on the head (-dpl 2), ranks 2-3 on node B (--headless -dp 4 -dpl 2
-dpr 2 --data-parallel-address HEAD --data-parallel-rpc-port 13345). Example 2: DP=4 with only
the front-end on the head (-dpl 0) and all four ranks on node B. For each: completions through
the head's HTTP API are correct and reach every rank on both nodes; the traffic on node B's veth
(tcpdump) carries no prompt text. A control run with security.insecure = true shows the prompt
marker on the wire, so the capture check is known to be able to fail.
"""

from harness import run_test
from netns import seed_example


def main() -> None:
    seed_example(1, "ipv4")
    seed_example(2, "ipv4")
    seed_example(2, "ipv4", insecure=True)


if __name__ == "__main__":
    run_test(main, timeout=90)
