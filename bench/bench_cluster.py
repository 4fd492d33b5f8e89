"""Time cluster-descriptor loading and topology queries on the examples.

    .venv/bin/python bench/bench_cluster.py [--repeat N] [--supernodes K]

Prints, per example: seconds to load + validate, to build the Topology, for one
distance_matrix over every device, and microseconds per tier_between query. With
``--supernodes K`` it adds a generated descriptor of K CloudMatrix384 super-nodes
(K x 768 devices) to show how validation scales.
"""

import argparse
import os
import random
import time

from xpod.hal.cluster import load_cluster, parse_cluster_text

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples", "clusters")


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def synthetic(k: int) -> str:
    """K CloudMatrix384 super-nodes (48 nodes x 8 910C each) joined by RoCE."""
    domains, groups = [], []
    for s in range(k):
        domains.append(f'      - {{name: sn{s}, level: supernode, hosts: "sn{s}-n[00-47]"}}')
        domains += [
            f'      - {{name: sn{s}-r{r:02d}, level: rack, hosts: "sn{s}-n[{4 * r:02d}-{4 * r + 3:02d}]"}}'
            for r in range(12)
        ]
        groups.append(
            f'    - {{name: g{s}, hosts: "sn{s}-n[00-47]", devices: {{model: ascend-910c, packagesPerNode: 8}}}}'
        )
    return (
        "\n".join(
            [
                "apiVersion: xpod/v1",
                "kind: Cluster",
                "metadata: {name: synthetic}",
                "spec:",
                "  fabrics:",
                "    - {name: sio, plane: scale-up, tiers: [{tier: 1, scope: package}]}",
                "    - {name: ub, plane: scale-up, tiers: [{tier: 2, scope: node, bandwidth: 196GB/s}, {tier: 3, scope: supernode, bandwidth: 196GB/s}]}",
                "    - {name: rdma, plane: scale-out, tiers: [{tier: 4, scope: cluster, bandwidth: 200Gb/s}]}",
                "  topology:",
                "    levels: [supernode, rack, node]",
                "    domains:",
                *domains,
                "  nodeGroups:",
                *groups,
            ]
        )
        + "\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--supernodes", type=int, default=0, help="also time K generated CloudMatrix384 super-nodes")
    args = ap.parse_args()
    print(f"{'example':28} {'devices':>7} {'load s':>8} {'topology s':>10} {'matrix s':>9} {'tier_between us':>15}")
    cases = [(name, None) for name in sorted(os.listdir(EXAMPLES))]
    if args.supernodes:
        cases.append((f"generated {args.supernodes} x CM384", synthetic(args.supernodes)))
    for name, text in cases:
        path = os.path.join(EXAMPLES, name)
        if text is None:
            t_load, cluster = best(lambda: load_cluster(path), args.repeat)
        else:
            t_load, cluster = best(lambda: parse_cluster_text(text, name), args.repeat)
        t_topo, topo = best(cluster.topology, args.repeat)
        t_mat, _ = best(topo.distance_matrix, args.repeat)
        devs = topo.devices()
        rng = random.Random(0)
        pairs = [(rng.choice(devs), rng.choice(devs)) for _ in range(20000)]
        t_q, _ = best(lambda: [topo.tier_between(a, b) for a, b in pairs], args.repeat)
        print(f"{name:28} {len(devs):7d} {t_load:8.3f} {t_topo:10.3f} {t_mat:9.3f} {t_q / len(pairs) * 1e6:15.2f}")


if __name__ == "__main__":
    main()
