"""A long run of the op contract fuzzer (tests/ops/fuzzing.py): every case of every op, in worker
subprocesses so that a crash is counted (and its case named) instead of ending the run.

    python benchmarks/fuzz_ops.py --seeds 600 --json benchmarks/fuzz-ops.json

Prints, per op, how many cases matched the reference, raised a clean error naming the argument,
answered wrongly, or crashed the worker, and lists the wrong and crashing cases.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKER = """
import json, sys
import torch
torch.set_num_threads(1)
from tests.ops.fuzzing import make_case, outcome
op, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for seed in range(start, stop):
    print(json.dumps({"seed": seed, "started": True}), flush=True)
    kind, detail = outcome(make_case(op, seed))
    print(json.dumps({"seed": seed, "outcome": kind, "detail": detail}), flush=True)
"""


def run_op(op: str, seeds: int) -> tuple[Counter, list]:
    counts, notes, start = Counter(), [], 0
    while start < seeds:
        done = subprocess.run([sys.executable, "-c", WORKER, op, str(start), str(seeds)], capture_output=True,
                              text=True, cwd=ROOT, timeout=3600)
        last = start
        for line in done.stdout.splitlines():
            record = json.loads(line)
            last = record["seed"]
            if "outcome" in record:
                counts[record["outcome"]] += 1
                if record["outcome"] == "wrong":
                    notes.append({"op": op, "seed": record["seed"], "detail": record["detail"]})
                last += 1
        if done.returncode != 0:  # the worker died in case `last`
            counts["crash"] += 1
            notes.append({"op": op, "seed": last, "detail": f"worker exit {done.returncode}: {done.stderr[-300:]}"})
            last += 1
        start = last
    return counts, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=600, help="cases per op")
    parser.add_argument("--json", help="write the counts here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.ops.fuzzing import GENERATORS, OUTCOMES

    report, total = {"seeds_per_op": args.seeds, "ops": {}, "notes": []}, Counter()
    print(f"{'op':<24}" + "".join(f"{o:>13}" for o in OUTCOMES))
    for op in sorted(GENERATORS):
        counts, notes = run_op(op, args.seeds)
        total.update(counts)
        report["ops"][op] = dict(counts)
        report["notes"] += notes
        print(f"{op:<24}" + "".join(f"{counts.get(o, 0):>13}" for o in OUTCOMES), flush=True)
    print(f"{'total':<24}" + "".join(f"{total.get(o, 0):>13}" for o in OUTCOMES))
    report["total"] = dict(total)
    for note in report["notes"]:
        print(note)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
