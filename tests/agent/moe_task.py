"""The e2e MoE serving task: writes skewed expert loads to $XPOD_MOE_LOAD_FILE (SGLang's
``{"logical_count": [layers][experts]}``, renamed into place) and records every plan it reads
from $XPOD_MOE_PLAN. The hot expert is 3 until the task has read a plan, then 11: the load
moves, so the server's loop has something to rebalance. Runs until stopped.

Usage: moe_task.py OUT_DIR LAYERS EXPERTS
"""

import json
import os
import sys
import time

out, layers, experts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
task = os.environ["XPOD_TASK_INDEX"]
load_file, plan_file = os.environ["XPOD_MOE_LOAD_FILE"], os.environ["XPOD_MOE_PLAN"]
sglang_file = os.environ["XPOD_MOE_PLAN_SGLANG"]
seen: list[dict] = []
last = None
while True:
    hot = 11 if seen else 3
    counts = [[100 + (2000 if e == hot else 0) for e in range(experts)] for _ in range(layers)]
    with open(load_file + ".tmp", "w") as f:
        json.dump({"logical_count": counts}, f)
    os.replace(load_file + ".tmp", load_file)
    try:
        st = os.stat(plan_file)
        version = (st.st_mtime_ns, st.st_size)
        if version != last:
            last = version
            with open(plan_file) as f:
                plan = json.load(f)
            with open(sglang_file) as f:
                rows = json.load(f)["physical_to_logical_map"]
            seen.append({"revision": plan["revision"], "phy2log": plan["phy2log"], "sglang_rows": len(rows)})
            with open(os.path.join(out, f"moe-seen-{task}.json.tmp"), "w") as f:
                json.dump(seen, f)
            os.replace(os.path.join(out, f"moe-seen-{task}.json.tmp"), os.path.join(out, f"moe-seen-{task}.json"))
    except FileNotFoundError:
        pass
    time.sleep(0.3)
