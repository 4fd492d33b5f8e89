"""Where the unallocated GPU capacity sits at the end of one openb replay, and which pods failed.

    .venv/bin/python bench/replay_openb_waste.py --list gpushare100 --profile default [--seed 42] [--top 12]

Replays one pod list (bench/data/openb/) with ``xpod replay openb``'s engine (the scheduler core
and a profile: ``default``, ``fgd``, ``bestfit``, ``random`` or a path) and rebuilds the final
cluster state from the placements. Prints:

* the idle GPU milli by cause: nodes never used; GPUs on nodes whose CPU or memory no GPU pod
  of the list fits any more; partial GPUs whose remainder is below the smallest sharing pod;
  the rest (a pod could still use it, but none of the remaining arrivals did);
* the GPU contents that waste the most (e.g. ``(810,)``: a GPU holding one 810-milli pod and
  nothing else, 190 milli idle);
* the failed pods by shape and by first reason (no GPU fits anywhere / GPUs fit only on nodes
  without the CPU or memory).

This is the diagnostic behind the ``fragmentation`` plugin's empty-GPU credit
(scheduler/core/plugins/fragmentation.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter, defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
MILLI = 1000
DATA = os.path.join(HERE, "data", "openb")


def main(argv=None) -> int:
    from xpod.scheduler.core.profile import load_profile
    from xpod.scheduler.sim import openb

    from replay_openb import profile_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", default="gpushare100", help="pod list name, e.g. gpushare100 or default")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--load", type=float, default=1.3)
    ap.add_argument("--top", type=int, default=12, help="rows per table")
    ap.add_argument("--data", default=DATA)
    args = ap.parse_args(argv)
    name = args.list if args.list.startswith("openb_pod_list_") else f"openb_pod_list_{args.list}"
    nodes = openb.load_nodes(os.path.join(args.data, "openb_node_list_gpu_node.csv"))
    pods = openb.load_pods(os.path.join(args.data, f"{name}.csv.gz"))
    r = openb.replay(nodes, pods, load_profile(profile_path(args.profile)), load=args.load, seed=args.seed)
    work = openb.shuffle_and_tune(pods, nodes.gpu_capacity_milli, args.load, args.seed)
    cap = nodes.gpu_capacity_milli
    print(
        f"{name} {args.profile} seed {args.seed}: allocated {r.alloc_pct:.2f} % of {cap // 1000} GPUs, "
        f"placed {r.pods_placed} of {r.pods_arrived} pods, {r.seconds:.1f} s"
    )

    # replay the placements in arrival order to rebuild the state and classify each failure
    index = {n: i for i, n in enumerate(nodes.names)}
    n_nodes, width = len(nodes.names), max(int(nodes.gpu_count.max()), 1)
    cpu, mem = nodes.cpu_milli.copy(), nodes.memory_mib.copy()
    left = np.zeros((n_nodes, width), dtype=np.int64)
    for i, c in enumerate(nodes.gpu_count.tolist()):
        left[i, :c] = MILLI
    used = np.zeros(n_nodes, dtype=bool)
    contents: dict[tuple[int, int], list[int]] = defaultdict(list)
    placed = iter(r.placements)
    nxt = next(placed, None)
    failed_shape, failed_why = Counter(), Counter()
    for j in range(len(work)):
        if nxt is not None and nxt.pod == work.names[j]:
            i = index[nxt.node]
            cpu[i] -= work.cpu_milli[j]
            mem[i] -= work.memory_mib[j]
            for g in nxt.gpu_indices:
                left[i, g] -= nxt.gpu_milli
                contents[(i, g)].append(nxt.gpu_milli)
            used[i] = True
            nxt = next(placed, None)
            continue
        milli, num = int(work.gpu_milli[j]), int(work.num_gpu[j])
        failed_shape[(num, milli, int(work.cpu_milli[j]))] += 1
        if num == 0:
            why = "no node has the CPU/memory"
        else:
            allowed = {s for s in work.spec[j].split("|") if s}
            gpu_fits = ((left >= milli).sum(axis=1) >= num) & np.array(
                [not allowed or m in allowed for m in nodes.model], dtype=bool
            )
            why = "GPUs fit only on nodes without the CPU/memory" if gpu_fits.any() else "no node has the GPUs"
        failed_why[why] += 1

    gpu_pods = work.num_gpu > 0
    min_cpu = int(work.cpu_milli[gpu_pods].min()) if gpu_pods.any() else 0
    min_mem = int(work.memory_mib[gpu_pods].min()) if gpu_pods.any() else 0
    sharing = work.gpu_milli[(work.num_gpu == 1) & (work.gpu_milli < MILLI)]
    min_share = int(sharing.min()) if len(sharing) else MILLI
    cause = Counter()
    for i in range(n_nodes):
        for g in range(int(nodes.gpu_count[i])):
            idle = int(left[i, g])
            if idle == 0:
                continue
            if not used[i]:
                cause["node never used"] += idle
            elif cpu[i] < min_cpu or mem[i] < min_mem:
                cause["node's CPU/memory fits no GPU pod"] += idle
            elif idle < min_share:
                cause[f"remainder below the smallest sharing pod ({min_share}m)"] += idle
            elif idle == MILLI:
                cause["whole idle GPU on a used node"] += idle
            else:
                cause["usable remainder no later pod took"] += idle
    total_idle = int(left.sum())
    print(f"\nidle GPU: {total_idle / 1000:.1f} GPUs = {100 * total_idle / cap:.2f} % of capacity")
    for k, v in cause.most_common():
        print(f"  {k:48s} {v / 1000:8.1f} GPUs {100 * v / cap:6.2f} %")

    waste, count = Counter(), Counter()
    for key, pods_on in contents.items():
        c = tuple(sorted(pods_on, reverse=True))
        count[c] += 1
        waste[c] += int(left[key])
    print(
        f"\nGPU contents wasting the most (milli per pod on the GPU; {n_gpus_unused(nodes, contents)} GPUs hold nothing):"
    )
    print(f"  {'contents':28s} {'GPUs':>6s} {'idle each':>9s} {'idle GPUs':>9s} {'% of idle':>9s}")
    for c, w in waste.most_common(args.top):
        print(f"  {str(c):28s} {count[c]:6d} {1000 - sum(c):9d} {w / 1000:9.1f} {100 * w / max(total_idle, 1):9.1f}")

    print(f"\nfailed pods: {sum(failed_shape.values())}")
    for k, v in failed_why.most_common():
        print(f"  {k:48s} {v:6d}")
    print(f"  {'(num_gpu, gpu_milli, cpu_milli)':48s}")
    for k, v in failed_shape.most_common(args.top):
        print(f"  {str(k):48s} {v:6d}")
    return 0


def n_gpus_unused(nodes, contents) -> int:
    return int(nodes.gpu_count.sum()) - len(contents)


if __name__ == "__main__":
    sys.exit(main())
