"""A classifier split into the two parts transfer methods treat differently: the feature
encoder (G_f in the DANN paper) and the label head (G_y), with named activations ("taps") for
methods that align more than the encoder output, and per-part learning-rate multipliers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from transferlab.errors import UserError

# The two taps every classifier has, whatever its modules are called.
FEATURES, LOGITS = "features", "logits"


def mlp(in_features: int, hidden: Sequence[int], out_features: int, batch_norm: bool = False,
        dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(in_features, width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(nn.ReLU(inplace=True))
        if dropout:
            layers.append(nn.Dropout(dropout))
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """`encoder` maps normalised images of `in_channels` channels (grey batches are repeated to
    them) to features, `head` features to class logits.

    `normalization` (per-channel mean and std of images scaled to [0, 1]) is what the encoder
    expects its input to be normalised with: it belongs to the backbone (ImageNet statistics for
    pretrained networks, [-1, 1] for the digit CNNs), and the data path applies it to each batch.
    `lr_mult` maps parameter-name prefixes (relative to this classifier, e.g. "encoder.trunk")
    to learning-rate multipliers, e.g. 0.1 for pretrained layers.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, head_hidden: Sequence[int] = (),
                 in_channels: int = 3, image_size: int = 28, feature_dim: int | None = None,
                 normalization: tuple[Sequence[float], Sequence[float]] = ((0.5,), (0.5,)),
                 lr_mult: Mapping[str, float] | None = None,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_dim = feature_dim or self._probe_feature_dim(in_channels, image_size)
        # A backbone's own head (e.g. convolutions on the unflattened features), else an MLP.
        self.head = head if head is not None else mlp(self.feature_dim, head_hidden, num_classes)
        mean, std = normalization
        self.normalization = (tuple(mean), tuple(std))
        self.lr_mult = dict(lr_mult or {})

    def _probe_feature_dim(self, in_channels: int, image_size: int) -> int:
        # Eval mode: a train-mode pass would move batch-norm running statistics (of pretrained
        # weights, say) towards those of an all-zero batch.
        was_training = self.encoder.training
        self.encoder.eval()
        with torch.no_grad():
            dim = self.encoder(torch.zeros(1, in_channels, image_size, image_size)).shape[1]
        self.encoder.train(was_training)
        return dim

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def tap_names(self) -> list[str]:
        """Every name `taps` accepts: the two fixed taps, then every submodule by its path."""
        return [FEATURES, LOGITS, *(name for name, _ in self.named_modules() if name)]

    def taps(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits, and the activations named by `names`: "features" (the encoder output),
        "logits", or any submodule's output by its path (e.g. "head.1", the first hidden
        layer's ReLU in an MLP head)."""
        modules = dict(self.named_modules())
        unknown = [n for n in names if n not in (FEATURES, LOGITS) and n not in modules]
        if unknown:
            raise UserError(f"unknown layer {unknown[0]!r}; valid: {', '.join(self.tap_names())}")
        found: dict[str, Tensor] = {}
        hooks = [modules[n].register_forward_hook(
                     lambda _m, _i, out, n=n: found.__setitem__(n, out))
                 for n in names if n not in (FEATURES, LOGITS)]
        try:
            features = self.encoder(x)
            logits = self.head(features)
        finally:
            for hook in hooks:
                hook.remove()
        found.update({FEATURES: features, LOGITS: logits})
        return logits, {n: found[n] for n in names}
