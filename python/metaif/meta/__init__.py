"""Bilevel meta-learning: the seam (:mod:`.problem`), the built-in forms of math.md §14 (ANIL,
iMAML, classic MAML), the
derivatives of their inner maps bound at a lambda (:mod:`.binding`, :mod:`.rows`), outer training
and polishing as library functions (no run files: those are :mod:`metaif.experiments`')."""

from .anil import AnilConfig, AnilProblem
from .batch import TaskBatch, Weights
from .binding import Bound, meta_gradient
from .heads import FeatureHead, bilevel
from .imaml import ImamlConfig, ImamlProblem
from .implicit import total_gradient
from .problem import BilevelProblem, FeatureHeadProblem, HeadCurvature, TrainableProblem, UnrolledProblem, anchored, outer_l2
from .train import Accuracy, TrainConfig, TrainResult, evaluate, full_objective, meta_train, solve_outer
from .unrolled import MamlConfig, MamlProblem

__all__ = ["Accuracy", "AnilConfig", "AnilProblem", "BilevelProblem", "Bound", "FeatureHead", "FeatureHeadProblem",
           "HeadCurvature", "ImamlConfig", "ImamlProblem", "MamlConfig", "MamlProblem", "TaskBatch", "TrainConfig",
           "TrainResult", "TrainableProblem", "UnrolledProblem", "Weights", "anchored", "bilevel", "evaluate",
           "full_objective", "meta_gradient", "meta_train", "outer_l2", "solve_outer", "total_gradient"]
