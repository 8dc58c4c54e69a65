"""Backbones: each builds a `Classifier` for images of `in_channels` x `image_size`^2."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from transferlab.errors import UserError
from transferlab.nn.classifier import Classifier


def _conv_block(c_in: int, c_out: int, batch_norm: bool) -> list[nn.Module]:
    norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
    return [nn.Conv2d(c_in, c_out, 5), *norm, nn.ReLU(inplace=True), nn.MaxPool2d(2)]


def dann_mnist(in_channels: int, num_classes: int, image_size: int = 28,
               batch_norm: bool = False, head_hidden: Sequence[int] = (100, 100),
               lr_mult: Mapping[str, float] | None = None) -> Classifier:
    """The MNIST network of the DANN paper (JMLR 2016, fig. 4 and appendix): conv 5x5x32 →
    maxpool 2 → conv 5x5x48 → maxpool 2 → features; label head 100 → 100 → classes."""
    encoder = nn.Sequential(*_conv_block(in_channels, 32, batch_norm),
                            *_conv_block(32, 48, batch_norm), nn.Flatten())
    return Classifier(encoder, num_classes, head_hidden, in_channels, image_size,
                      lr_mult=lr_mult)


def lenet(in_channels: int, num_classes: int, image_size: int = 28, batch_norm: bool = False,
          feature_dim: int = 500, lr_mult: Mapping[str, float] | None = None) -> Classifier:
    """LeNet as in the ADDA paper: conv 5x5x20 → maxpool → conv 5x5x50 → maxpool → fc 500
    (the features) → linear classifier."""
    side = ((image_size - 4) // 2 - 4) // 2
    encoder = nn.Sequential(*_conv_block(in_channels, 20, batch_norm),
                            *_conv_block(20, 50, batch_norm), nn.Flatten(),
                            nn.Linear(50 * side * side, feature_dim), nn.ReLU(inplace=True))
    return Classifier(encoder, num_classes, (), in_channels, image_size, lr_mult=lr_mult)


class GaussianNoise(nn.Module):
    """Adds N(0, std²) noise in training mode, nothing in evaluation mode."""

    def __init__(self, std: float = 1.0) -> None:
        super().__init__()
        self.std = std

    def forward(self, x: Tensor) -> Tensor:
        return x + self.std * torch.randn_like(x) if self.training else x


def _conv3(c_in: int, c_out: int, momentum: float) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out, momentum=momentum),
            nn.LeakyReLU(0.1, inplace=True)]


def dirtt_small(in_channels: int, num_classes: int, image_size: int = 32,
                instance_norm: bool = True, dropout: float = 0.5, noise: float = 1.0,
                bn_momentum: float = 0.01,
                lr_mult: Mapping[str, float] | None = None) -> Classifier:
    """The digit network of the DIRT-T paper ("small", appendix and official code
    github.com/RuiShu/dirt-t, codebase/models/nns/small.py): instance-normalised input →
    3 × conv 3x3x64 (batch norm, leaky ReLU 0.1) → maxpool 2 → dropout → Gaussian noise →
    the same again → features, which the domain discriminator sees (the code's trim = 5); the
    head is 3 × conv 3x3x64 → global average pool → linear. Batch norm's running statistics
    move by `bn_momentum` per batch (TensorFlow's decay 0.99 in the official code)."""
    width, m = 64, bn_momentum
    side = image_size // 4
    encoder = nn.Sequential(
        *([nn.InstanceNorm2d(in_channels)] if instance_norm else []),
        *_conv3(in_channels, width, m), *_conv3(width, width, m), *_conv3(width, width, m),
        nn.MaxPool2d(2), nn.Dropout(dropout), GaussianNoise(noise),
        *_conv3(width, width, m), *_conv3(width, width, m), *_conv3(width, width, m),
        nn.MaxPool2d(2), nn.Dropout(dropout), GaussianNoise(noise), nn.Flatten())
    head = nn.Sequential(nn.Unflatten(1, (width, side, side)), *_conv3(width, width, m),
                         *_conv3(width, width, m), *_conv3(width, width, m),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
    return Classifier(encoder, num_classes, in_channels=in_channels, image_size=image_size,
                      lr_mult=lr_mult, head=head)


RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
# ImageNet statistics: what the torchvision and most timm weights were trained with. Randomly
# initialised ImageNet-style networks use them too, so that a run differs from a pretrained
# one by its weights only.
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def resnet(in_channels: int, num_classes: int, image_size: int = 224, arch: str = "resnet50",
           weights: str | None = None, bottleneck_dim: int | None = 256,
           head_hidden: Sequence[int] = (), trunk_lr_mult: float = 0.1,
           lr_mult: Mapping[str, float] | None = None) -> Classifier:
    """A torchvision ResNet as `encoder.trunk` (its classification layer removed), then the
    bottleneck the adaptation papers add (Linear → BatchNorm → ReLU, `bottleneck_dim` wide;
    null: none), as `encoder.bottleneck`. `weights`: a torchvision weight name of `arch`
    (e.g. IMAGENET1K_V1), or null for random initialisation; pretrained, the trunk learns at
    `trunk_lr_mult` times the rate (the papers' 0.1). Grey images are repeated to RGB."""
    if arch not in RESNETS:
        raise UserError(f"backbone.arch={arch} is invalid: must be one of {', '.join(RESNETS)}")
    import torchvision  # here: a second of start-up the digit backbones do without

    trunk = torchvision.models.get_model(arch, weights=None)
    if weights:
        trunk.load_state_dict(pretrained_state(arch, weights))
    width = trunk.fc.in_features
    trunk.fc = nn.Identity()
    return _with_bottleneck(trunk, width, num_classes, bottleneck_dim, head_hidden,
                            {"encoder.trunk": trunk_lr_mult} if weights else {}, lr_mult,
                            IMAGENET)


def pretrained_state(arch: str, name: str) -> dict[str, Tensor]:
    """torchvision's weights `name` of `arch`: from torch.hub's cache, else downloaded."""
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    try:
        weights = enum[name]
    except KeyError:
        valid = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise UserError(f"backbone.weights={name} is not a weight of {arch}; valid: {valid}, "
                        "or null") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    present = cached.exists()
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        if present:
            raise UserError(f"backbone.weights={name}: cannot load {cached} ({reason}); delete "
                            "it to download it again") from None
        raise UserError(f"backbone.weights={name}: {cached} is not there and downloading "
                        f"{weights.url} failed ({reason}); put the file there (torch.hub's "
                        "cache, moved by TORCH_HOME) or use backbone.weights=null") from None


def timm_model(in_channels: int, num_classes: int, image_size: int = 224,
               name: str = "resnet50", pretrained: bool = False,
               bottleneck_dim: int | None = 256, head_hidden: Sequence[int] = (),
               trunk_lr_mult: float = 0.1, lr_mult: Mapping[str, float] | None = None
               ) -> Classifier:
    """Any timm model by `name` as the trunk (its pooled features), with the same bottleneck,
    head and learning-rate rule as `resnet`; normalised with the model's own statistics."""
    try:
        import timm
    except ImportError:
        raise UserError("backbone=timm needs the timm package: pip install "
                        "'transferlab[timm]'") from None
    if not timm.is_model(name):
        raise UserError(f"backbone.name={name} is not a timm model; see timm.list_models()")
    try:
        trunk = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except (OSError, RuntimeError, ValueError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(f"backbone.name={name}: cannot get its pretrained weights ({reason}); "
                        "connect once to fill the Hugging Face cache, or use "
                        "backbone.pretrained=false") from None
    config = trunk.pretrained_cfg
    normalization = (tuple(config.get("mean", IMAGENET[0])), tuple(config.get("std", IMAGENET[1])))
    return _with_bottleneck(trunk, trunk.num_features, num_classes, bottleneck_dim, head_hidden,
                            {"encoder.trunk": trunk_lr_mult} if pretrained else {}, lr_mult,
                            normalization)


def _with_bottleneck(trunk: nn.Module, width: int, num_classes: int,
                     bottleneck_dim: int | None, head_hidden: Sequence[int],
                     pretrained_mult: Mapping[str, float],
                     lr_mult: Mapping[str, float] | None,
                     normalization: tuple[Sequence[float], Sequence[float]]) -> Classifier:
    parts: dict[str, nn.Module] = {"trunk": trunk}
    if bottleneck_dim:
        parts["bottleneck"] = nn.Sequential(nn.Linear(width, bottleneck_dim),
                                            nn.BatchNorm1d(bottleneck_dim), nn.ReLU())
    return Classifier(nn.Sequential(OrderedDict(parts)), num_classes, head_hidden, in_channels=3,
                      feature_dim=bottleneck_dim or width, normalization=normalization,
                      lr_mult={**pretrained_mult, **(lr_mult or {})})
