"""Classic MAML's exact total-Hessian-vector product three ways, on the same inputs, in one run.

Configuration (issue 12): Omniglot, Conv-4 (64 channels) with a linear 5-way head, 5-way 1-shot
with 15 queries per class, K = 5 inner steps (alpha = 0.4), m tasks, float32, one thread.

* metaif: ``InfluenceAnalyzer.hvp`` — the unrolled map's rows vmapped over chunks of tasks,
  forward-over-reverse (``torch.func``);
* per-task torch.func: the same formula one task at a time;
* higher-style autograd: unroll with ``create_graph=True`` through the K steps (what ``higher`` and
  learn2learn do), take the meta-gradient with ``create_graph=True`` and differentiate ``g . v``
  again (double backward), one task at a time.

    python benchmarks/maml_hvp.py --root ../shared/data/omniglot --tasks 200 --json benchmarks/maml-hvp.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.func import functional_call, grad, jvp

from metaif.data import TaskConfig, load_omniglot, sample_tasks, split_classes
from metaif.influence import InfluenceAnalyzer
from metaif.meta import MamlConfig, MamlProblem, TaskBatch
from metaif.meta.unrolled import default_model
from metaif.models import conv4


def median_time(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def per_task_func(problem: MamlProblem, lam, v, data, c):
    """The same formula as metaif's, one task at a time."""
    out = problem.gamma * v
    for ci, (x_tr, y_tr, w_tr, x_val, y_val, w_val) in zip(c, data):
        def total(la):
            return problem.data_loss(problem.adapt(la, x_tr, y_tr, w_tr), x_val, y_val, w_val)

        out = out + ci * jvp(grad(total), (lam,), (v,))[1]
    return out


def higher_style(problem: MamlProblem, lam, v, data, c):
    """Autograd through an unrolled, create_graph=True inner loop, then a double backward."""
    model, alpha = problem.model, problem.config.inner_lr
    out = problem.gamma * v
    for ci, (x_tr, y_tr, w_tr, x_val, y_val, w_val) in zip(c, data):
        params = lam.detach().clone().requires_grad_(True)
        theta = params
        for _ in range(problem.config.inner_steps):
            loss = (w_tr * problem.loss.value(functional_call(model.module, model.unflatten(theta), (x_tr,)),
                                               y_tr)).sum()
            theta = theta - alpha * torch.autograd.grad(loss, theta, create_graph=True)[0]
        val = (w_val * problem.loss.value(functional_call(model.module, model.unflatten(theta), (x_val,)), y_val)).sum()
        g = torch.autograd.grad(val, params, create_graph=True)[0]
        out = out + ci * torch.autograd.grad((g * v).sum(), params)[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="Omniglot folder (zips or <alphabet>/<character>/*.png)")
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="K")
    parser.add_argument("--baseline-tasks", type=int, default=20, help="tasks the baselines run (extrapolated to m)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pool, _ = split_classes(load_omniglot(args.root), 0.5, seed=0)
    tasks = sample_tasks(pool, TaskConfig(ways=5, shots=1, queries=15, num_tasks=args.tasks, seed=0))
    problem = MamlProblem(default_model(conv4(1, args.channels, 28), 5), MamlConfig(inner_steps=args.steps))
    lam = problem.init_lambda(0)
    v = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(0))
    report = {"tasks": len(tasks), "p": lam.numel(), "K": args.steps, "threads": args.threads}

    began = time.perf_counter()
    analyzer = InfluenceAnalyzer(problem, lam, tasks)
    report["metaif_setup_s"] = time.perf_counter() - began
    report["metaif_hvp_s"], _ = median_time(lambda: analyzer.hvp(v), args.repeats)

    k = min(args.baseline_tasks, len(tasks))
    batch = TaskBatch.from_taskset(tasks, torch.arange(k))
    data = [(batch.x_tr[i], batch.y_tr[i], batch.w_tr[i], batch.x_val[i], batch.y_val[i], batch.w_val[i])
            for i in range(k)]
    sub = InfluenceAnalyzer(problem, lam, tasks.subset(torch.arange(k)))
    reference = sub.hvp(v)
    weights = torch.full((k,), 1.0 / k)
    for name, fn in (("per_task_func", per_task_func), ("higher_style", higher_style)):
        seconds, theirs = median_time(lambda fn=fn: fn(problem, lam, v, data, weights), 1)
        report[f"{name}_rel_diff"] = float((theirs - reference).norm() / reference.norm())
        report[f"{name}_hvp_s_extrapolated"] = seconds / k * len(tasks)
        report[f"{name}_ratio"] = report[f"{name}_hvp_s_extrapolated"] / report["metaif_hvp_s"]
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
