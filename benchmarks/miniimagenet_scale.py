"""Issue 20's mini-ImageNet-sized run: 10,000 5-way 1-shot tasks with 15 queries on the synthetic
mini-ImageNet-shaped set (64 x 600 84x84 RGB images, ``--dataset synthetic-miniimagenet``; not real
data), Conv-4 64, one thread: the evaluation (accuracy after adapting) of ``--eval-tasks`` further
tasks (one of ``evaluate``'s 100-task batches by default), one full-batch outer gradient, and the
analyzer's set-up with one exact total HVP, the body state bounded by ``--memory-gb``; the peak RSS of
the process after each step (``--steps`` picks them; the data always loads first).

    python benchmarks/miniimagenet_scale.py --memory-gb 2 --json benchmarks/miniimagenet-scale.json
    python benchmarks/miniimagenet_scale.py --steps evaluate --json benchmarks/miniimagenet-evaluate.json
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from metaif.data import Pool, TaskConfig, load_dataset, sample_tasks
from metaif.influence import InfluenceAnalyzer, InfluenceConfig
from metaif.meta import AnilConfig, AnilProblem, TaskBatch, Weights, evaluate, meta_gradient
from metaif.models import conv4
from metaif.utils.io import write_json

STEPS = ("evaluate", "gradient", "hvp")


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--memory-gb", type=float, default=2.0, help="body state kept per process (GB)")
    parser.add_argument("--eval-tasks", type=int, default=100, help="meta-test tasks of the evaluate step")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    steps = args.steps.split(",")
    if not set(steps) <= set(STEPS):
        parser.error(f"--steps: comma-separated, of {', '.join(STEPS)}; got {args.steps!r}")
    torch.set_num_threads(1)
    record: dict = {"tasks": args.tasks, "memory_gb": args.memory_gb, "steps": {}}

    def step(name: str, began: float, **extra) -> None:
        record["steps"][name] = {"seconds": time.perf_counter() - began, "peak_rss_gb": peak_gb(), **extra}
        print(name, record["steps"][name], flush=True)

    began = time.perf_counter()
    data = load_dataset("synthetic-miniimagenet")  # mini-ImageNet's meta-training split: 64 classes x 600
    pool = Pool(data, tuple(range(data.num_classes)), torch.arange(len(data.labels)))
    tasks = sample_tasks(pool, TaskConfig(ways=5, shots=1, queries=15, num_tasks=args.tasks, seed=0))
    held = sample_tasks(pool, TaskConfig(ways=5, shots=1, queries=15, num_tasks=args.eval_tasks, seed=1))
    del data, pool
    step("data", began, images=int(tasks.images.shape[0]), unique_used=int(torch.unique(
        torch.cat([tasks.train_index.flatten(), tasks.val_index.flatten()])).numel()))
    problem = AnilProblem(conv4(3, 64, 84), AnilConfig(ways=5))
    lam = problem.init_lambda(0)
    memory = args.memory_gb * 2 ** 30

    if "evaluate" in steps:
        began = time.perf_counter()
        score = evaluate(problem, lam, held)
        step("evaluate", began, tasks=score.tasks, accuracy=score.mean)

    if "gradient" in steps:
        began = time.perf_counter()
        batch = TaskBatch.from_taskset(tasks)
        grad, info = meta_gradient(problem, lam, batch, Weights.uniform(tasks).c, memory=memory)
        step("outer_gradient", began, grad_norm=float(grad.norm()), outer_loss=float(info["outer_loss"]))
        del batch, grad

    if "hvp" in steps:
        began = time.perf_counter()
        analyzer = InfluenceAnalyzer(problem, lam, tasks, config=InfluenceConfig(memory_gb=args.memory_gb))
        step("analyzer_setup", began, body_memory=analyzer.diagnostics["body_memory"])
        v = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(0))
        began = time.perf_counter()
        hv = analyzer.hvp(v)
        step("exact_total_hvp", began, vhv=float(v @ hv))
    record["machine"] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.json:
        write_json(args.json, record)


if __name__ == "__main__":
    main()
