"""Influence functions for bilevel meta-learning (math.md §2–§13): total gradients and total
Hessians, task-IF and instance-IF removal predictions, model editing and influence scores."""

from .analyzer import VARIANTS, InfluenceAnalyzer, InfluenceConfig, Scores
from .solve import HessianSolver, SolverConfig, SolverError
from .oracle import finite_difference_hvp, total_gradient_sum

__all__ = ["VARIANTS", "HessianSolver", "InfluenceAnalyzer", "InfluenceConfig", "Scores", "SolverConfig",
           "SolverError", "finite_difference_hvp", "total_gradient_sum"]
