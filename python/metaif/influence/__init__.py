"""Influence functions for bilevel meta-learning (math.md §2–§13). Work in progress: the total
Hessian (§4) against the bilevel seam, with its finite-difference oracle."""

from .total_hessian import VARIANTS, TaskState, finite_difference_hvp, task_states, total_hvp

__all__ = ["VARIANTS", "TaskState", "finite_difference_hvp", "task_states", "total_hvp"]
