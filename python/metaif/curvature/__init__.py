"""Curvature of a model's loss: losses and their logit derivatives, the few-shot head Hessian and
its solvers (Woodbury, Cholesky, CG, EK-FAC per task or pooled), and the body's tangent and
second-order passes (hand-written for standard layers, autograd otherwise) over unique images."""

from .body import AutogradPasses
from .fused import FUSIONS, Fusion
from .head import LinearHeadCurvature, linear_logits, pooled_kfe_bases
from .head_solvers import HEAD_SOLVERS, head_solver, register_head_solver
from .images import INPUT_CHUNK, ImageBody, features
from .losses import LOSSES, Loss, get_loss
from .passes import PASSES, body_passes, passes_for
from .steps import STEPS, Step, register_step
from .traced import TracedPasses, traced_unsupported

__all__ = ["FUSIONS", "HEAD_SOLVERS", "INPUT_CHUNK", "LOSSES", "PASSES", "STEPS", "AutogradPasses", "Fusion",
           "ImageBody", "LinearHeadCurvature", "Loss", "Step", "TracedPasses", "body_passes", "features",
           "get_loss", "head_solver", "linear_logits", "passes_for", "pooled_kfe_bases", "register_head_solver",
           "register_step", "traced_unsupported"]
