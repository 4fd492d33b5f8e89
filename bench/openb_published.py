"""Derive bench/data/openb/published_curves.csv from the FGD authors' cached simulator results.

    .venv/bin/python bench/openb_published.py --from DIR [--out bench/data/openb/published_curves.csv]

DIR holds ``analysis_allo_discrete.csv`` and ``analysis_frag_discrete.csv`` from
``hkust-adsl/kubernetes-scheduler-simulator`` ``experiments/analysis/expected_results/`` (commit
8f3d6417, Apache-2.0; a copy is in the steering repo's shared/data/traces/alibaba-gpu-v2023/
fgd_expected_results/). Output: one row per (pod list, policy, metric) with the mean over the
seeds (42-51) at each arrived percent 0..130; metric ``alloc`` = allocated GPU in % of capacity
(the paper's Fig. 9a), ``frag`` = fragmented GPU in % of capacity (Fig. 7a).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from collections import defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
POINTS = [str(a) for a in range(131)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", required=True, metavar="DIR")
    ap.add_argument("--out", default=os.path.join(HERE, "data", "openb", "published_curves.csv"))
    args = ap.parse_args(argv)
    rows = []
    for metric, name in (("alloc", "analysis_allo_discrete.csv"), ("frag", "analysis_frag_discrete.csv")):
        runs = defaultdict(list)
        with open(os.path.join(args.src, name), newline="", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                runs[(r["workload"], r["sc_policy"].split("-", 1)[-1].lower())].append(r)
        for (wl, pol), rs in sorted(runs.items()):
            means = [round(statistics.fmean(float(r[p]) for r in rs), 3) for p in POINTS]
            rows.append([wl, pol, metric, len(rs), *means])
    with open(args.out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["workload", "policy", "metric", "seeds", *POINTS])
        w.writerows(rows)
    print(f"{args.out}: {len(rows)} curves")
    return 0


if __name__ == "__main__":
    sys.exit(main())
