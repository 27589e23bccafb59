"""The influence engine's configuration."""

from __future__ import annotations

from ..curvature import HEAD_SOLVERS, INPUT_CHUNK, PASSES
from ..linalg import SolverConfig
from ..meta.binding import PATHS, TASK_CHUNK
from ..utils.config import check, check_choice, config, finite, setting

__all__ = ["DIRECT", "InfluenceConfig", "VARIANTS"]

VARIANTS = ("exact", "gn", "gamma")  # of the total Hessian (math.md §4)
DIRECT = "direct"                     # the direct Hessian of the direct-IF baseline (eq. 7)


@config
class InfluenceConfig:
    """How the influence engine linearises and solves."""

    variant: str = setting("exact", "total Hessian (math.md §4): exact (third-order term included), gn (without it), "
                                    "gamma (gn plus Theorem 5.1's Gamma I)", choices=VARIANTS)
    solver: SolverConfig = setting(help="solver of the total Hessian (damping, method, tolerances, retries)",
                                   factory=SolverConfig)
    inner: str = setting("auto", "inner iHVP of feature-head problems: auto (exact Woodbury or Cholesky), woodbury, "
                                 "cholesky, cg, ekfac, ekfac-pooled (math.md §13.3)", choices=tuple(HEAD_SOLVERS))
    inner_damping: float = setting(0.0, "damping added to every inner Hessian before its iHVP (0: exact)")
    third_order_train: bool = setting(True, "training-instance IF with the third-order term (False: math.md §10's "
                                            "'second-order only')")
    path: str = setting("auto", "auto: unique-input body passes for feature-head problems; seam: the generic "
                                "per-task path", choices=PATHS)
    body_passes: str = setting("auto", "body passes of feature-head problems: auto (traced, hand-written per "
                                       "registered module; autograd where a module has no step), traced, autograd",
                               choices=("auto", *PASSES))
    chunk: int = setting(TASK_CHUNK, "tasks per feature-space batch: bounds memory; chunks are fixed by the data "
                                     "and ranks share whole chunks, so R ranks want R chunks or more")
    image_chunk: int = setting(INPUT_CHUNK, "inputs per body pass (fewer for inputs larger than 28x28: a pass "
                                            "reads at most image_chunk x 784 input values): bounds memory; ranks "
                                            "share whole chunks, as with chunk")
    memory_gb: float | None = setting(None, "GB of per-input state that each process keeps for the body passes "
                                            "(default: half the memory available when the analysis starts, shared "
                                            "by the processes); the chunks beyond it are recomputed inside each "
                                            "product: the same numbers, more time", shapes_results=False,
                                      added=True)
    progress: bool = setting(False, "progress bars on the set-up")

    def __post_init__(self) -> None:
        check_choice(self, "variant", self.variant, VARIANTS)
        check(isinstance(self.solver, SolverConfig), self, "solver", "a SolverConfig", self.solver)
        check_choice(self, "inner", self.inner, HEAD_SOLVERS)
        check(finite(self.inner_damping) and self.inner_damping >= 0, self, "inner_damping", "a finite number >= 0",
              self.inner_damping)
        check_choice(self, "path", self.path, PATHS)
        check_choice(self, "body_passes", self.body_passes, ("auto", *PASSES))
        check(self.memory_gb is None or finite(self.memory_gb) and self.memory_gb >= 0, self, "memory_gb",
              "a number of GB >= 0, or None (half the available memory)", self.memory_gb)
        for name in ("chunk", "image_chunk"):
            check(isinstance(getattr(self, name), int) and getattr(self, name) >= 1, self, name, "an integer >= 1",
                  getattr(self, name))
