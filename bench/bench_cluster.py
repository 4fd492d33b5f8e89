"""Time cluster-descriptor loading and topology queries on the examples.

    .venv/bin/python bench/bench_cluster.py [--repeat N]

Prints, per example: seconds to load + validate, to build the Topology, for one
distance_matrix over every device, and microseconds per tier_between query.
"""

import argparse
import os
import random
import time

from xpod.hal.cluster import load_cluster

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples", "clusters")


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{'example':28} {'devices':>7} {'load s':>8} {'topology s':>10} {'matrix s':>9} {'tier_between us':>15}")
    for name in sorted(os.listdir(EXAMPLES)):
        path = os.path.join(EXAMPLES, name)
        t_load, cluster = best(lambda: load_cluster(path), args.repeat)
        t_topo, topo = best(cluster.topology, args.repeat)
        t_mat, _ = best(topo.distance_matrix, args.repeat)
        devs = topo.devices()
        rng = random.Random(0)
        pairs = [(rng.choice(devs), rng.choice(devs)) for _ in range(20000)]
        t_q, _ = best(lambda: [topo.tier_between(a, b) for a, b in pairs], args.repeat)
        print(f"{name:28} {len(devs):7d} {t_load:8.3f} {t_topo:10.3f} {t_mat:9.3f} {t_q / len(pairs) * 1e6:15.2f}")


if __name__ == "__main__":
    main()
