"""Curvature of a model's loss: the few-shot head Hessian's low-rank factor and its EK-FAC
approximation (math.md §13.3)."""

from .head import ekfac_head_solver, ekfac_pooled_bases, head_factor

__all__ = ["ekfac_head_solver", "ekfac_pooled_bases", "head_factor"]
