"""Issue 3, test 1 (IPv6): the seed's two multi-node examples over IPv6 (ULA fd00::/8).

As test_multinode_seed_ipv4, with the head's address an IPv6 one: example 1 written in the
bracketed form "[fd00:213:1::1]" on both nodes' command lines, example 2 in the plain form.
Completions reach every rank on both nodes; no prompt text is visible on node B's veth.
"""

from harness import run_test
from netns import seed_example


def main() -> None:
    seed_example(1, "ipv6", bracketed=True)
    seed_example(2, "ipv6")


if __name__ == "__main__":
    run_test(main, timeout=90)
