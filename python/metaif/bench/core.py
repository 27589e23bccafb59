"""The benchmark framework: cases of metaif against a baseline on the same inputs in one process,
timed as the median of repeats after a warm-up, outputs checked for agreement first."""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

Fn = Callable[[], object]


@dataclass(frozen=True)
class BenchConfig:
    """What to run: ``quick`` shrinks the slowest cases so the whole run takes under 2 minutes;
    ``only`` keeps the cases whose op name contains it (groups marked explicit, such as the
    data-set scale runs, run only when named); ``root`` is the Omniglot folder they read."""

    quick: bool = False
    threads: int = 1
    repeats: int | None = None
    only: str | None = None
    root: str | None = None

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.repeats is not None and self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")

    @property
    def n_repeats(self) -> int:
        return self.repeats or (3 if self.quick else 7)


@dataclass
class Case:
    op: str
    case: str
    baseline: str
    ours: Fn
    base: Fn | None           # None: no baseline at this size (ours is timed alone)
    flops: float | None = None  # per call, for GFLOP/s
    note: str = ""
    norm_check: bool = False  # agreement as ||ours - base|| <= 2e-3 ||base|| (float32 sums of many terms)
    repeats: int | None = None  # overrides the config's (long cases run once)


@dataclass
class Row:
    op: str
    case: str
    baseline: str
    metaif_ms: float
    baseline_ms: float | None
    speedup: float | None
    gflops: float | None
    peak_pct: float | None
    note: str
    peak_rss_mb: float


def median_ms(fn: Fn, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def sgemm_peak_gflops(repeats: int, size: int = 1024) -> float:
    """Best single-precision GEMM rate of torch.mm at ``size``^3: the yardstick for GEMM-bound kernels."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(max(repeats, 5)):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / (best * 1e9)


def _first(out: object) -> torch.Tensor | list:
    return out[0] if isinstance(out, tuple) else out


def agree(case: Case) -> None:
    if case.base is None:
        return
    ours, base = _first(case.ours()), _first(case.base())
    if case.norm_check:
        rel = float((ours - base).norm() / base.norm())
        if not rel <= 2e-3:
            raise AssertionError(f"{case.op} {case.case}: relative difference {rel:.2e} > 2e-3")
        return
    torch.testing.assert_close(ours, base, rtol=2e-3, atol=2e-3, msg=lambda m: f"{case.op} {case.case}: {m}")


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(cfg: BenchConfig, groups, report: Callable[[str], None] = print) -> dict:
    """Run every selected case of ``groups`` (functions ``cfg -> Iterator[Case]`` with an ``ops``
    tuple, ``aliases`` that select the whole group, ``explicit`` when they run only if named);
    return ``{"machine", "config", "rows"}``."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    peak = sgemm_peak_gflops(cfg.n_repeats)
    report(f"torch {torch.__version__}, {cfg.threads} thread(s), median of {cfg.n_repeats}; "
           f"sgemm peak {peak:.1f} GFLOP/s (torch.mm 1024^3)")
    header = (f"{'op':<22} {'case':<30} {'baseline':<27} {'metaif ms':>10} {'base ms':>10} {'speed-up':>8} "
              f"{'GFLOP/s':>8} {'%peak':>6}  note")
    report(header)
    report("-" * len(header))
    rows = []
    for group in groups:
        whole = cfg.only is not None and cfg.only in getattr(group, "aliases", ())
        named = whole or cfg.only is not None and any(cfg.only in op for op in group.ops)
        if (cfg.only and not named) or (getattr(group, "explicit", False) and not named):
            continue
        cases: Iterator[Case] = group(cfg)
        for case in cases:
            if cfg.only and not whole and cfg.only not in case.op:
                continue
            agree(case)
            repeats = case.repeats or cfg.n_repeats
            ours = median_ms(case.ours, repeats)
            base = median_ms(case.base, repeats) if case.base is not None else None
            gflops = case.flops / (ours * 1e6) if case.flops else None
            row = Row(case.op, case.case, case.baseline, ours, base, base / ours if base else None, gflops,
                      100 * gflops / peak if gflops else None, case.note, peak_rss_mb())
            rows.append(row)
            rate = f"{gflops:8.1f} {row.peak_pct:5.0f}%" if gflops else f"{'':8} {'':6}"
            base_text = f"{base:10.2f} {row.speedup:7.2f}x" if base is not None else f"{'-':>10} {'-':>8}"
            report(f"{row.op:<22} {row.case:<30} {row.baseline:<27} {ours:10.2f} {base_text} {rate}  {row.note}")
    return {"machine": {"torch": torch.__version__, "threads": cfg.threads,
                        "cpu": platform.processor() or platform.machine(), "sgemm_peak_gflops": peak},
            "config": asdict(cfg), "rows": [asdict(r) for r in rows]}
