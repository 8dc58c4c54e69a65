"""MixVal on hand cases whose probes' outcomes are known."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from transferlab.evaluation.base import Outputs
from transferlab.evaluation.mixval import MixVal, ice_score, mirrored_partners


def test_partners_mirror_within_each_chunk():
    assert mirrored_partners(4, 4).tolist() == [3, 2, 1, 0]
    assert mirrored_partners(6, 4).tolist() == [3, 2, 1, 0, 5, 4]
    assert mirrored_partners(5, 2).tolist() == [1, 0, 3, 2, 4]


class LineProbe:
    """Images are single pixels x (shape (N, 1, 1, 1)); the model scores class 1 by
    `slope` · (x − 100) and class 0 by 0, i.e. it predicts 1 above 100 when slope > 0."""

    def __init__(self, pixels: list[float], slope: float = 1.0) -> None:
        self.pixels = torch.tensor(pixels).view(-1, 1, 1, 1)
        self.slope = slope
        self.batch_size = 3  # smaller than the probes: logits are made batch by batch

    def images(self, index: Tensor) -> Tensor:
        return self.pixels[index]

    def logits(self, count: int, inputs) -> Tensor:
        x = torch.cat([inputs(slice(i, i + self.batch_size))
                       for i in range(0, count, self.batch_size)]).view(-1)
        return torch.stack([torch.zeros_like(x), self.slope * (x - 100)], dim=1)


def outputs(probe: LineProbe) -> dict[str, Outputs]:
    logits = probe.logits(len(probe.pixels), lambda rows: probe.pixels[rows])
    return {"target_val": Outputs(logits, probe=probe)}


def test_a_model_with_the_boundary_between_its_clusters_passes_every_probe():
    # class 0 at 0..20, class 1 at 180..200: every 0.55/0.45 mixture stays on the side of the
    # dominant image. Chunks of 3: sorted by pseudo-label each chunk is one cluster (intra
    # pairs only), in their own order [0, 10, 20 | 180, 190, 200] too: no inter pair.
    probe = LineProbe([0, 10, 20, 180, 190, 200])
    assert MixVal("intra", chunk=3)(outputs(probe)) == 1.0
    assert math.isnan(MixVal("inter", chunk=3)(outputs(probe)))
    assert MixVal("both", chunk=3)(outputs(probe)) == 1.0  # the defined kind alone
    # One chunk of 6: every mirrored pair crosses the clusters, and passes.
    assert MixVal("inter", chunk=6)(outputs(probe)) == 1.0
    assert math.isnan(MixVal("intra", chunk=6)(outputs(probe)))


def test_inter_cluster_probes_fail_where_the_boundary_hugs_a_cluster():
    # The boundary at 100 but class 1's images at 101..103: a mixture 0.55·x1 + 0.45·x0 of a
    # class-1 image with a class-0 image (0) falls near 56, below the boundary, so the model
    # does not predict the dominant image's class; mixtures dominated by class 0 pass.
    probe = LineProbe([0, 0, 0, 101, 102, 103])
    assert MixVal("inter", chunk=6)(outputs(probe)) == pytest.approx(0.5)
    assert MixVal("intra", chunk=3)(outputs(probe)) == 1.0  # each cluster is solid
    both = MixVal("both", chunk=6)(outputs(probe))  # intra undefined with one chunk of 6
    assert both == pytest.approx(0.5)


def test_intra_probes_pair_images_that_share_a_pseudo_label():
    # Sorted by pseudo-label, mirrored partners within a chunk of 2 share their label here;
    # in the images' own order (inter) no chunk of 2 mixes two labels: nothing to score.
    probe = LineProbe([0, 200, 10, 190])
    pseudo = torch.tensor([0, 1, 0, 1])
    order = torch.sort(pseudo, stable=True).indices

    def logits_of(a: Tensor, b: Tensor) -> Tensor:
        return probe.logits(len(a), lambda rows: 0.55 * probe.pixels[a[rows]]
                            + 0.45 * probe.pixels[b[rows]])

    assert ice_score(pseudo, order, logits_of, same=True, chunk=2) == 1.0
    assert math.isnan(ice_score(pseudo, torch.tensor([0, 2, 1, 3]), logits_of, same=False,
                                chunk=2))


def test_the_mixing_weight_matters():
    # With the dominant image's weight at 0.55 the cross mixtures of 0 and 190 land at 104.5
    # or 85.5, on the dominant side; at 0.45 (the other image dominating) every cross probe
    # fails.
    probe = LineProbe([0, 190])
    assert MixVal("inter", mix=0.55, chunk=2)(outputs(probe)) == 1.0
    assert MixVal("inter", mix=0.45, chunk=2)(outputs(probe)) == 0.0


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind='all'"):
        MixVal("all")
