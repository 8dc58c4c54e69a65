"""What an evaluation measures: named evaluators, each declaring the splits it reads, whose
labels it uses and which direction is better. See `base` for the interface, `validators` for
the label-free ones."""

from transferlab.evaluation.base import Accuracy, Evaluator, Outputs, evaluate
from transferlab.evaluation.mixval import MixVal
from transferlab.evaluation.validators import (
    BatchNuclearNorm,
    DeepEmbeddedValidation,
    Entropy,
    ImportanceWeightedValidation,
    InformationMaximization,
    SoftNeighbourhoodDensity,
)

__all__ = ["Accuracy", "BatchNuclearNorm", "DeepEmbeddedValidation", "Entropy", "Evaluator",
           "ImportanceWeightedValidation", "InformationMaximization", "MixVal", "Outputs",
           "SoftNeighbourhoodDensity", "evaluate"]
