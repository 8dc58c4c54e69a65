"""Network parts: backbones, the classifier they form, and the alignment building blocks."""

from transferlab.nn.classifier import Classifier, mlp
from transferlab.nn.discriminator import DomainDiscriminator
from transferlab.nn.fresh import fresh_copy
from transferlab.nn.gradient_reversal import GradientReversal, grad_reverse

__all__ = ["Classifier", "DomainDiscriminator", "GradientReversal", "fresh_copy", "grad_reverse",
           "mlp"]
