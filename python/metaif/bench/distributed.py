"""Scale-out on this machine (issue 14): the exact total HVP and scoring every task of the 200-task
Omniglot Conv-4 (64 channels) pipeline with 1 and 2 processes (gloo on loopback, one thread each),
and the share of a CG iteration spent in the exact sum of a p-vector over the ranks (beside a plain
float all-reduce, what it replaced).

    metaif bench --only distributed --root ../shared/data/omniglot
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from ..data import TaskConfig, load_omniglot, sample_tasks, split_classes
from ..influence import InfluenceAnalyzer
from ..meta import AnilConfig, AnilProblem
from ..models import conv4
from ..parallel import World, launch
from .core import BenchConfig, Case

TASKS, REPEATS = 200, 3


def _median_s(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        World.current().barrier()
        began = time.perf_counter()
        fn()
        World.current().barrier()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _all_reduce(world: World, v: torch.Tensor) -> None:
    """A plain float all-reduce, what a sum over ranks cost before sums became exact."""
    if world.distributed:
        torch.distributed.all_reduce(v)


def measure(root: str, out: str) -> None:
    """One rank's part: set-up, one exact total HVP, the scores of every task, a p-vector all-reduce."""
    torch.set_num_threads(1)
    world = World.current()
    pool = split_classes(load_omniglot(root), 0.5, seed=0)[0]
    tasks = sample_tasks(pool, TaskConfig(ways=5, shots=1, queries=15, num_tasks=TASKS, seed=0))
    problem = AnilProblem(conv4(1, 64, 28), AnilConfig(ways=5))
    lam = problem.init_lambda(0)
    began = time.perf_counter()
    analyzer = InfluenceAnalyzer(problem, lam, tasks, world=world)
    setup = time.perf_counter() - began
    v = torch.randn(lam.numel(), generator=torch.Generator().manual_seed(0))
    result = {"processes": world.size, "setup_s": setup, "hvp_s": _median_s(lambda: analyzer.hvp(v), REPEATS),
              "scores_s": _median_s(lambda: analyzer.directional(v), REPEATS),
              "allreduce_s": _median_s(lambda: _all_reduce(world, v.clone()), 20),
              "exact_s": _median_s(lambda: world.sum_blocks([v], v), 20), "p": lam.numel()}
    if world.writer:
        Path(out).write_text(json.dumps(result))


def _run(nproc: int, root: str) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "result.json")
        if nproc == 1:
            measure(root, out)
        else:
            launch(nproc, measure, root, out)
        return json.loads(Path(out).read_text())


def distributed_cases(cfg: BenchConfig) -> Iterator[Case]:
    if cfg.root is None:
        raise SystemExit("metaif bench --only distributed needs --root: the Omniglot folder")
    one, two = _run(1, cfg.root), _run(2, cfg.root)
    yield Case("total_hvp", f"Omniglot m={TASKS} Conv-4, 2 procs", "1 process", lambda: None, None,
               measured=(1e3 * two["hvp_s"], 1e3 * one["hvp_s"]),
               note=f"set-up {one['setup_s']:.1f} s -> {two['setup_s']:.1f} s; a p-vector's exact sum over the "
                    f"ranks {1e3 * two['exact_s']:.2f} ms = {100 * two['exact_s'] / two['hvp_s']:.2f}% of a CG "
                    f"iteration (a float all-reduce {1e3 * two['allreduce_s']:.2f} ms; p = {two['p']})")
    yield Case("scores", f"every task, m={TASKS}, 2 procs", "1 process", lambda: None, None,
               measured=(1e3 * two["scores_s"], 1e3 * one["scores_s"]),
               note="r^T D_lambda of every task and instance (one directional pass)")


distributed_cases.ops = ()
distributed_cases.aliases = ("distributed",)
distributed_cases.explicit = True
