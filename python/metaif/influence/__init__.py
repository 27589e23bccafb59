"""Influence functions for bilevel meta-learning (math.md §4–§13): total-Hessian products in every
variant and their solves, task-IF and instance-IF removal predictions, the direct-IF baseline,
model editing and influence scores."""

from ..linalg import SolverConfig, SolverError
from .analyzer import InfluenceAnalyzer, Scores
from .config import DIRECT, VARIANTS, InfluenceConfig
from .oracle import finite_difference_hvp, total_gradient_sum

__all__ = ["DIRECT", "VARIANTS", "InfluenceAnalyzer", "InfluenceConfig", "Scores", "SolverConfig", "SolverError",
           "finite_difference_hvp", "total_gradient_sum"]
