"""Statistical distances between a batch of source and a batch of target activations, which a
network can make small by changing its features: the multi-kernel maximum mean discrepancy of
DAN (Long et al., ICML 2015) and the CORAL loss of Deep CORAL (Sun & Saenko, ECCV-W 2016).
Both take (N, D) activations; flatten convolutional maps first."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

# Gaussian kernels k(x, y) = exp(-‖x - y‖² / (b · m)), where m is the mean squared distance of
# the pairs the estimate uses: five kernels a factor 2 apart around m, as in DAN's released code
# (kernel_num 5, kernel_mul 2); the paper sums its kernels, as we do, with equal weights.
DAN_BANDWIDTHS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _in_fp32(loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run `loss(source, target, ...)` in at least float32, also under bf16 autocast:
    distances and covariances are differences of large similar numbers, which bf16 would
    round away."""

    @functools.wraps(loss)
    def wrapper(source: Tensor, target: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        dtype = torch.promote_types(source.dtype, torch.float32)
        with torch.autocast(source.device.type, enabled=False):
            return loss(source.to(dtype), target.to(dtype), *args, **kwargs)

    return wrapper


def _kernel_sum(squared_distances: Tensor, mean_squared_distance: Tensor,
                bandwidths: Sequence[float]) -> Tensor:
    # The bandwidth is a statistic of the batch, not something the network should move:
    # letting gradients through it would let the features shrink the kernels instead of
    # aligning the domains.
    scale = mean_squared_distance.detach().clamp_min(1e-12)
    return sum(torch.exp(-squared_distances / (b * scale)) for b in bandwidths)


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """‖a_i - b_j‖² for every pair (differentiable also where a_i = b_j, unlike cdist)."""
    return ((a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.t()).clamp_min(0)


@_in_fp32
def multi_kernel_mmd(source: Tensor, target: Tensor,
                     bandwidths: Sequence[float] = DAN_BANDWIDTHS,
                     linear: bool = True) -> Tensor:
    """An unbiased estimate of MMD² between the distributions of `source` and `target` rows
    under the sum of Gaussian kernels with `bandwidths` relative to the mean squared distance.

    linear=True is DAN's linear-time estimate (eq. 5 of the paper; Gretton et al., JMLR 2012,
    sec. 6): samples are taken in quad-tuples (s_2i-1, s_2i, t_2i-1, t_2i) and the estimate is
    the mean of k(s,s') + k(t,t') - k(s,t') - k(s',t) over them; it uses min(n_s, n_t) // 2
    quad-tuples. linear=False is the quadratic-time U-statistic (Gretton et al., eq. 3):
    within-domain kernel means over distinct pairs minus twice the cross-domain mean. Both
    are unbiased, so either can come out negative when the two distributions are equal.
    """
    if linear:
        half = min(len(source), len(target)) // 2
        if half == 0:
            raise ValueError("the linear-time MMD needs at least 2 samples per domain")
        s1, s2 = source[0:2 * half:2], source[1:2 * half:2]
        t1, t2 = target[0:2 * half:2], target[1:2 * half:2]
        pairs = torch.stack([(s1 - s2).pow(2).sum(1), (t1 - t2).pow(2).sum(1),
                             (s1 - t2).pow(2).sum(1), (s2 - t1).pow(2).sum(1)])
        k = _kernel_sum(pairs, pairs.mean(), bandwidths)
        return (k[0] + k[1] - k[2] - k[3]).mean()
    n_s, n_t = len(source), len(target)
    if min(n_s, n_t) < 2:
        raise ValueError("the quadratic MMD needs at least 2 samples per domain")
    joint = torch.cat([source, target])
    distances = _squared_distances(joint, joint)
    n = n_s + n_t
    k = _kernel_sum(distances, distances.sum() / (n * (n - 1)), bandwidths)
    k_ss, k_tt, k_st = k[:n_s, :n_s], k[n_s:, n_s:], k[:n_s, n_s:]
    within_s = (k_ss.sum() - k_ss.diagonal().sum()) / (n_s * (n_s - 1))
    within_t = (k_tt.sum() - k_tt.diagonal().sum()) / (n_t * (n_t - 1))
    return within_s + within_t - 2 * k_st.mean()


@_in_fp32
def coral(source: Tensor, target: Tensor) -> Tensor:
    """The CORAL loss ‖C_S - C_T‖²_F / (4 d²) (Sun & Saenko, eq. 1), with C the unbiased
    (1 / (n - 1)) covariance of each domain's d-dimensional rows."""
    d = source.shape[1]
    difference = torch.cov(source.t()) - torch.cov(target.t())
    return difference.pow(2).sum() / (4 * d * d)
