"""What an evaluation measures: named evaluators, each declaring the splits it reads, whose
labels it uses and which direction is better. See `base` for the interface."""

from transferlab.evaluation.base import Accuracy, Evaluator, Outputs, evaluate

__all__ = ["Accuracy", "Evaluator", "Outputs", "evaluate"]
