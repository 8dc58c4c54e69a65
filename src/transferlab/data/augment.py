"""Augmentation of whole uint8 batches on their device: random resized crop, horizontal flip
and (off by default) colour jitter, as in the usual ImageNet-style training transform, and the
deterministic center crop that evaluation uses instead.

The random parameters are drawn on the CPU from a generator the caller owns (a `BatchStream`
checkpoints it with its position), so a run is reproducible under its seed, resumes exactly,
and draws the same crops on any device. Each crop is then cut from the stored image and
resized with antialiasing, which is what torchvision's `RandomResizedCrop` does to a tensor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from transferlab.errors import UserError
from transferlab.rules import PHOTO_SIZE

ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback
GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, torchvision's rgb_to_grayscale


@dataclass(frozen=True)
class CropParams:
    """One batch's random draws: crop boxes (top, left, height, width in stored pixels), which
    samples are mirrored, and colour-jitter factors (brightness, contrast, saturation) or None."""

    boxes: Tensor  # (n, 4) int64
    flip: Tensor  # (n,) bool
    jitter: Tensor | None  # (n, 3) float


def for_input(size: int, photo_size: int = PHOTO_SIZE, **options: object) -> Augment | None:
    """The augmentation of folder data for a backbone taking `size`-pixel inputs: `Augment`
    (random resized crops at `size`, flips, ...) for photos, none for digit-sized inputs (at
    most `photo_size` pixels), where a random crop of a tenth of the image cuts the digit."""
    return Augment(size, **options) if size > photo_size else None  # type: ignore[arg-type]


class Augment:
    """`size`: the side of the square images the network sees. Training: a box covering a
    fraction `scale` of the stored image with aspect ratio in `ratio` (log-uniform), resized to
    `size`, mirrored with probability 1/2 if `flip`, then brightness, contrast and saturation
    each scaled by a factor in [1 - color_jitter, 1 + color_jitter] (in that order; 0 = off).
    Evaluation: the central `eval_crop` fraction of each side, resized to `size` (with a 256 px
    store, 0.875 is the usual "resize 256, center crop 224" and needs no resizing)."""

    def __init__(self, size: int = 224, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), flip: bool = True,
                 color_jitter: float = 0.0, eval_crop: float = 0.875) -> None:
        scale, ratio = tuple(scale), tuple(ratio)
        checks = {
            "size": (size, isinstance(size, int) and size >= 1, "an integer >= 1"),
            "scale": (list(scale), len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1,
                      "[low, high] with 0 < low <= high <= 1"),
            "ratio": (list(ratio), len(ratio) == 2 and 0 < ratio[0] <= ratio[1],
                      "[low, high] with 0 < low <= high"),
            "color_jitter": (color_jitter, 0 <= color_jitter < 1, "a number in [0, 1)"),
            "eval_crop": (eval_crop, 0 < eval_crop <= 1, "a number in (0, 1]"),
        }
        for key, (value, ok, allowed) in checks.items():
            if not ok:
                raise UserError(f"data.augment.{key}={value} is invalid: must be {allowed}")
        self.size, self.scale, self.ratio = size, scale, ratio
        self.flip, self.color_jitter, self.eval_crop = flip, color_jitter, eval_crop

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """A random augmentation of each image of a uint8 (n, C, H, W) batch, uint8 (n, C,
        size, size), on the batch's device."""
        return self.apply(images, self.sample(len(images), *images.shape[-2:], generator))

    def sample(self, n: int, height: int, width: int, generator: torch.Generator) -> CropParams:
        """torchvision's RandomResizedCrop.get_params for n images at once: the first of
        `ATTEMPTS` random boxes that fits the image, else the central box of the nearest
        allowed aspect ratio."""
        area = height * width
        target = area * torch.empty(n, ATTEMPTS).uniform_(*self.scale, generator=generator)
        log_ratio = torch.empty(n, ATTEMPTS).uniform_(*map(math.log, self.ratio),
                                                      generator=generator)
        aspect = log_ratio.exp()
        w = (target * aspect).sqrt().round().long()
        h = (target / aspect).sqrt().round().long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.int().argmax(1, keepdim=True)  # the first attempt that fits
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        u = torch.rand(n, 2, generator=generator)
        top = (u[:, 0] * (height - h + 1)).long()
        left = (u[:, 1] * (width - w + 1)).long()
        fallback = self._central_box(height, width)
        none_fit = ~fits.any(1)
        boxes = torch.stack([top, left, h, w], 1)
        boxes[none_fit] = torch.tensor(fallback)
        flip = (torch.rand(n, generator=generator) < 0.5) if self.flip else torch.zeros(
            n, dtype=torch.bool)
        jitter = None
        if self.color_jitter:
            j = self.color_jitter
            jitter = torch.empty(n, 3).uniform_(1 - j, 1 + j, generator=generator)
        return CropParams(boxes, flip, jitter)

    def _central_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        low, high = self.ratio
        if width / height < low:
            w, h = width, round(width / low)
        elif width / height > high:
            w, h = round(height * high), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, images: Tensor, params: CropParams) -> Tensor:
        # Channels-last, the layout `as_input` and the network want.
        out = torch.empty(len(images), images.shape[1], self.size, self.size,
                          dtype=torch.uint8, device=images.device,
                          memory_format=torch.channels_last)
        boxes, flips = params.boxes.tolist(), params.flip.tolist()
        for k, ((top, left, h, w), flip) in enumerate(zip(boxes, flips, strict=True)):
            crop = resize(images[k : k + 1, :, top : top + h, left : left + w], self.size)
            out[k : k + 1] = crop.flip(-1) if flip else crop
        if params.jitter is not None:
            out = jitter(out, params.jitter.to(images.device))
        return out

    def center(self, images: Tensor) -> Tensor:
        """The deterministic evaluation view: the central `eval_crop` of each side, resized to
        `size` (offsets rounded as torchvision's center_crop rounds them)."""
        height, width = images.shape[-2:]
        h, w = round(height * self.eval_crop), round(width * self.eval_crop)
        top, left = round((height - h) / 2), round((width - w) / 2)
        return resize(images[:, :, top : top + h, left : left + w], self.size)


def resize(images: Tensor, size: int) -> Tensor:
    """uint8 (n, C, h, w) → uint8 (n, C, size, size), bilinear with antialiasing. On the CPU
    torch resizes uint8 directly (and exactly as torchvision's `resize` does); other devices
    resize in float and round."""
    if images.shape[-2:] == (size, size):
        return images
    if images.device.type == "cpu":
        return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True,
                      align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def jitter(images: Tensor, factors: Tensor) -> Tensor:
    """Brightness, contrast and saturation of uint8 images scaled by per-image factors (n, 3),
    each step clamped to [0, 255] as torchvision's colour transforms clamp."""
    x = images.float()
    brightness, contrast, saturation = (f.view(-1, 1, 1, 1) for f in factors.unbind(1))
    x = (x * brightness).clamp_(0, 255)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp_(0, 255)
    grey = _grey(x)
    x = ((x - grey) * saturation + grey).clamp_(0, 255)
    return x.round_().to(torch.uint8)


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(GREY_WEIGHTS, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)
