"""ADDA: adversarial discriminative domain adaptation (Tzeng et al., CVPR 2017).

Stage 1 trains a source encoder and classifier on labelled source. Stage 2 freezes both, starts
a separate target encoder from the source encoder's weights, and plays a GAN game: the
discriminator learns to tell source features from target features, and the target encoder is
trained with inverted labels (its features labelled "source") to fool it. Target images are
then classified by the target encoder and the frozen source classifier.

Where the encoder ends is `split`: by default everything but the classifier's last layer, as in
the paper's LeNet (conv, conv, fc 500 | fc 10); `encoder` adapts the backbone's encoder only.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from transferlab.data.domain import TrainingView
from transferlab.losses.adversarial import domain_labels
from transferlab.methods.base import (
    Batch,
    DomainName,
    Method,
    OptimizerFactory,
    Stage,
    optimize,
    supervised_stage,
)
from transferlab.nn import DomainDiscriminator
from transferlab.nn.discriminator import SOURCE
from transferlab.rules import Rule

log = logging.getLogger(__name__)


class ADDA(Method):
    limits: ClassVar = {"pretrain_steps": Rule(int, min=0), "adapt_steps": Rule(int, min=0),
                        "split": Rule(str, choices=("encoder", "last_layer"))}

    def __init__(self, pretrain_steps: int, adapt_steps: int,
                 adapt_optimizer: OptimizerFactory,
                 discriminator_hidden: Sequence[int] = (500, 500), split: str = "last_layer",
                 **common: Any) -> None:
        super().__init__(**common)
        self.pretrain_steps, self.adapt_steps = pretrain_steps, adapt_steps
        self.make_adapt_optimizer = adapt_optimizer
        # What the target side adapts: the backbone's encoder, or all but the classifier's last
        # layer (the ADDA paper's LeNet split: conv, conv, fc 500 | fc 10).
        self.split = split
        head = self.network.head
        if split == "encoder" and any(True for _ in head[:-1].parameters()):
            log.warning("method.split=encoder adapts the encoder under head layers frozen at "
                        "their source values, so the target features can drift away from what "
                        "those layers expect; the ADDA paper's split is "
                        "method.split=last_layer (docs/methods.md)")
        self.target_encoder = copy.deepcopy(self.network.encoder)
        self.target_hidden = copy.deepcopy(head[:-1]) if split == "last_layer" else nn.Sequential()
        width = head[-1].in_features if split == "last_layer" else self.network.feature_dim
        self.discriminator = DomainDiscriminator(width, discriminator_hidden)
        # Until stage 2 starts, target images are classified by the source network.
        self.register_buffer("adapting", torch.tensor(False))

    def stages(self, view: TrainingView) -> list[Stage]:
        pretrain = supervised_stage("pretrain", self.network, self.optimizer(self.network),
                                    view.source, self.pretrain_steps, reusable=True)
        self._d_optimizer = self.optimizer(self.discriminator, factory=self.make_adapt_optimizer)
        self._t_optimizer = self.optimizer(self.target_encoder, self.target_hidden,
                                           factory=self.make_adapt_optimizer)
        adapt = Stage("adapt", self.adapt_steps, self.adapt_update,
                      {"source": view.source, "target": view.target},
                      [self._d_optimizer, self._t_optimizer], anneal_lr=False,
                      on_start=self.start_adapting)
        return [pretrain, adapt]

    def start_adapting(self) -> None:
        self.target_encoder.load_state_dict(self.network.encoder.state_dict())
        self.target_hidden.load_state_dict(self._source_hidden().state_dict())
        self.adapting.fill_(True)

    def train(self, mode: bool = True) -> ADDA:
        super().train(mode)
        if self.adapting:  # the source network is frozen: keep its batch-norm statistics too
            self.network.eval()
            self.network.requires_grad_(False)
        return self

    def adapt_update(self, batch: Batch, progress: float) -> dict[str, Tensor]:
        (xs, _), (xt, _) = batch["source"], batch["target"]
        with torch.no_grad():
            source_features = self._source_hidden()(self.network.features(xs))
        target_features = self.target_features(xt)

        logits = self.discriminator(torch.cat([source_features, target_features.detach()]))
        domains = domain_labels(len(xs), len(xt), logits.device)
        d_loss = F.cross_entropy(logits, domains)
        optimize(self._d_optimizer, d_loss)

        # Inverted labels: the target encoder is rewarded when its features look like source.
        fooled = torch.full((len(xt),), SOURCE, device=logits.device)
        t_loss = F.cross_entropy(self.discriminator(target_features), fooled)
        optimize(self._t_optimizer, t_loss)

        d_acc = (logits.argmax(1) == domains).float().mean()
        return {"loss/discriminator": d_loss, "loss/target_encoder": t_loss,
                "adda/domain_acc": d_acc}

    def _source_hidden(self) -> nn.Sequential:
        """The source head's layers that the target side adapts (none with split=encoder)."""
        return self.network.head[:-1] if self.split == "last_layer" else nn.Sequential()

    def _classifier(self) -> nn.Module:
        """What classifies the adapted features: the head, or its last layer."""
        return self.network.head[-1] if self.split == "last_layer" else self.network.head

    def target_features(self, x: Tensor) -> Tensor:
        return self.target_hidden(self.target_encoder(x))

    def outputs(self, x: Tensor, domain: DomainName) -> tuple[Tensor, Tensor]:
        """Before adaptation, the source network's (pretraining evaluates exactly as
        source-only training does, so its stored stage serves both); during it, the features
        the discriminator sees, for both domains."""
        if not self.adapting:
            return super().outputs(x, domain)
        if domain == "target":
            features = self.target_features(x)
        else:
            features = self._source_hidden()(self.network.features(x))
        return features, self._classifier()(features)
