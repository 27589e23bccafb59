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
    data-set scale runs, run only when named); ``root`` is the Omniglot folder they read;
    ``device`` where the peak rates are measured and cases time with CUDA events ("cuda")."""

    quick: bool = False
    threads: int = 1
    repeats: int | None = None
    only: str | None = None
    root: str | None = None
    device: str = "cpu"

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
    bytes: float | None = None  # least memory traffic per call, for GB/s
    note: str = ""
    norm_check: bool = False  # agreement as ||ours - base|| <= 2e-3 ||base|| (float32 sums of many terms)
    repeats: int | None = None  # overrides the config's (long cases run once)
    measured: tuple[float, float | None] | None = None  # (ours, baseline) ms timed elsewhere (other processes)


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
    gbps: float | None
    bandwidth_pct: float | None
    note: str
    peak_rss_mb: float


def _cuda(device: str) -> bool:
    return torch.device(device).type == "cuda"


def median_ms(fn: Fn, repeats: int, device: str = "cpu") -> float:
    """Median time of ``fn`` in milliseconds after one warm-up call: wall time on the CPU, CUDA
    events on the current stream (each call ends with the device idle again) on a GPU."""
    fn()
    times = []
    for _ in range(repeats):
        if _cuda(device):
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def sgemm_peak_gflops(repeats: int, device: str = "cpu") -> float:
    """Best single-precision GEMM rate of torch.mm (1024^3 on the CPU, 8192^3 on a GPU): the
    yardstick for GEMM-bound kernels."""
    size = 8192 if _cuda(device) else 1024
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = min(median_ms(lambda: torch.mm(a, b), 1, device) for _ in range(max(repeats, 5)))
    return 2 * size**3 / (best * 1e6)


def copy_bandwidth_gbps(repeats: int, device: str = "cpu") -> float:
    """Best rate of a 1 GiB device-to-device copy, bytes read plus written: the yardstick for
    bandwidth-bound kernels."""
    src = torch.empty(2**28, device=device)
    dst = torch.empty_like(src)
    best = min(median_ms(lambda: dst.copy_(src), 1, device) for _ in range(max(repeats, 5)))
    return 2 * src.numel() * 4 / (best * 1e6)


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
    peak = sgemm_peak_gflops(cfg.n_repeats, cfg.device)
    bandwidth = copy_bandwidth_gbps(cfg.n_repeats, cfg.device)
    where = torch.cuda.get_device_name(cfg.device) if _cuda(cfg.device) else f"{cfg.threads} CPU thread(s)"
    report(f"torch {torch.__version__}, {where}, median of {cfg.n_repeats}; sgemm peak {peak:.1f} GFLOP/s "
           f"(torch.mm), copy {bandwidth:.0f} GB/s")
    header = (f"{'op':<22} {'case':<30} {'baseline':<27} {'metaif ms':>10} {'base ms':>10} {'speed-up':>8} "
              f"{'GFLOP/s':>8} {'%peak':>6} {'GB/s':>7} {'%copy':>6}  note")
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
            if case.measured is not None:
                ours, base = case.measured
            else:
                agree(case)
                repeats = case.repeats or cfg.n_repeats
                ours = median_ms(case.ours, repeats, cfg.device)
                base = median_ms(case.base, repeats, cfg.device) if case.base is not None else None
            gflops = case.flops / (ours * 1e6) if case.flops else None
            gbps = case.bytes / (ours * 1e6) if case.bytes else None
            row = Row(case.op, case.case, case.baseline, ours, base, base / ours if base else None, gflops,
                      100 * gflops / peak if gflops else None, gbps, 100 * gbps / bandwidth if gbps else None,
                      case.note, peak_rss_mb())
            rows.append(row)
            rate = f"{gflops:8.1f} {row.peak_pct:5.0f}%" if gflops else f"{'':8} {'':6}"
            traffic = f"{gbps:7.0f} {row.bandwidth_pct:5.0f}%" if gbps else f"{'':7} {'':6}"
            base_text = f"{base:10.2f} {row.speedup:7.2f}x" if base is not None else f"{'-':>10} {'-':>8}"
            report(f"{row.op:<22} {row.case:<30} {row.baseline:<27} {ours:10.2f} {base_text} {rate} {traffic}  "
                   f"{row.note}")
    machine = {"torch": torch.__version__, "threads": cfg.threads, "cpu": platform.processor() or platform.machine(),
               "sgemm_peak_gflops": peak, "copy_gbps": bandwidth}
    if _cuda(cfg.device):
        machine["gpu"] = torch.cuda.get_device_name(cfg.device)
    return {"machine": machine, "config": asdict(cfg), "rows": [asdict(r) for r in rows]}
