"""Bilevel meta-learning: the two built-in forms of math.md §14, outer training and retraining."""

from .anil import AnilConfig, AnilProblem
from .batch import TaskBatch, Weights
from .imaml import ImamlConfig, ImamlProblem
from .implicit import total_gradient
from .train import Accuracy, TrainConfig, TrainResult, evaluate, meta_train, retrain, solve_outer

__all__ = ["Accuracy", "AnilConfig", "AnilProblem", "ImamlConfig", "ImamlProblem", "TaskBatch", "TrainConfig",
           "TrainResult", "Weights", "evaluate", "meta_train", "retrain", "solve_outer", "total_gradient"]
