"""Batched augmentation: the crop/flip geometry on hand cases, agreement with torchvision's
own resized crop, reproducibility under the seed, and exact resumption inside a stream."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from transferlab.data.augment import Augment, CropParams
from transferlab.data.domain import BatchStream, Split, as_input
from transferlab.errors import UserError


def gradient(height: int = 8, width: int = 8) -> torch.Tensor:
    """One image whose pixel value is its column index times 10, in every channel."""
    row = torch.arange(width, dtype=torch.uint8) * 10
    return row.expand(1, 3, height, width).contiguous()


def params(boxes: list[list[int]], flip: list[bool]) -> CropParams:
    return CropParams(torch.tensor(boxes), torch.tensor(flip), None)


def test_a_flip_of_the_whole_image_mirrors_the_columns():
    out = Augment(size=8).apply(gradient(), params([[0, 0, 8, 8]], [True]))
    assert out[0, 0, 3].tolist() == [70, 60, 50, 40, 30, 20, 10, 0]
    assert torch.equal(Augment(size=8).apply(gradient(), params([[0, 0, 8, 8]], [False])),
                       gradient())


def test_a_crop_at_the_output_size_is_the_box_itself():
    image = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8)
    out = Augment(size=4).apply(image, params([[1, 2, 4, 4]], [False]))
    assert torch.equal(out[0, 0], image[0, 0, 1:5, 2:6])
    mirrored = Augment(size=4).apply(image, params([[1, 2, 4, 4]], [True]))
    assert mirrored[0, 0, 0].tolist() == [13, 12, 11, 10]  # row 1, columns 5, 4, 3, 2


def test_an_enlarged_crop_interpolates_the_gradient_linearly():
    # Columns 2..5 (values 20..50) resized to 8: output pixel u samples column
    # 2 + (u + 0.5) / 2 - 0.5, clamped to the box, where the gradient is 10 per column;
    # halves round up.
    out = Augment(size=8).apply(gradient(), params([[0, 2, 8, 4]], [False]))
    expected = [10 * min(max(2 + (u + 0.5) / 2 - 0.5, 2), 5) for u in range(8)]
    assert out[0, 0, 0].tolist() == [int(v + 0.5) for v in expected]
    assert expected[:3] == [20, 22.5, 27.5]


def test_crops_match_torchvisions_resized_crop_exactly():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=g)
    augment = Augment(size=24)
    drawn = augment.sample(6, 40, 40, g)
    out = augment.apply(images, drawn)
    # A channels-last store (as folder caches are) gives the same crops.
    assert torch.equal(augment.apply(images.contiguous(memory_format=torch.channels_last),
                                     drawn), out)
    for k, (top, left, h, w) in enumerate(drawn.boxes.tolist()):
        expected = TF.resized_crop(images[k], top, left, h, w, [24, 24], antialias=True)
        if drawn.flip[k]:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(out[k], expected), k


def test_sampled_boxes_lie_inside_the_image_with_the_allowed_area_and_ratio():
    augment = Augment(size=16, scale=(0.25, 0.5), ratio=(0.5, 2.0))
    drawn = augment.sample(2000, 30, 40, torch.Generator().manual_seed(1))
    top, left, h, w = drawn.boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 30).all() and (left + w <= 40).all()
    area = (h * w).float() / (30 * 40)
    # Rounding the sides to whole pixels moves the area a little past the drawn fraction.
    assert area.min() > 0.22 and area.max() < 0.54
    assert (w / h).min() > 0.45 and (w / h).max() < 2.2
    assert 0.45 < drawn.flip.float().mean() < 0.55


def test_the_fallback_is_the_central_box_when_no_attempt_fits():
    # A 4:1 image with ratios near 1 and the whole area: every attempt is too tall.
    augment = Augment(size=4, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    drawn = augment.sample(3, 10, 40, torch.Generator().manual_seed(0))
    assert drawn.boxes.tolist() == [[0, 15, 10, 10]] * 3


def test_draws_depend_only_on_the_generator():
    augment = Augment(size=8, color_jitter=0.4)
    images = torch.randint(0, 256, (5, 3, 12, 12), dtype=torch.uint8)
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    c = augment(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_colour_jitter_scales_brightness_by_its_factor():
    image = torch.full((1, 3, 4, 4), 100, dtype=torch.uint8)
    jittered = Augment(size=4, color_jitter=0.5).apply(
        image, CropParams(torch.tensor([[0, 0, 4, 4]]), torch.tensor([False]),
                          torch.tensor([[1.2, 1.0, 1.0]])))
    assert (jittered == 120).all()


def test_evaluation_is_the_central_crop():
    image = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    center = Augment(size=14, eval_crop=0.875).center(image)
    assert torch.equal(center, image[:, :, 1:15, 1:15])


def test_a_stream_resumes_with_the_same_augmented_batches():
    g = torch.Generator().manual_seed(0)
    split = Split(torch.randint(0, 256, (10, 3, 12, 12), dtype=torch.uint8, generator=g),
                  torch.arange(10))
    augment = Augment(size=8)
    stream = BatchStream(split, 4, seed=5, augment=augment)
    for _ in range(3):
        stream.next()
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v
             for k, v in stream.state_dict().items()}
    expected = [stream.next() for _ in range(4)]
    resumed = BatchStream(split, 4, seed=99, augment=augment)
    resumed.load_state_dict(state)
    for (x, y), (ex, ey) in zip((resumed.next() for _ in range(4)), expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    # Augmentation has its own generator: it does not change which samples a batch holds.
    plain = BatchStream(split, 4, seed=5)
    with_augment = BatchStream(split, 4, seed=5, augment=augment)
    assert torch.equal(plain.next()[1], with_augment.next()[1])


@pytest.mark.parametrize("key,value", [("size", 0), ("scale", (0.5, 0.2)),
                                       ("ratio", (0.0, 1.0)), ("color_jitter", 1.5),
                                       ("eval_crop", 0.0)])
def test_bad_settings_are_one_line_errors(key, value):
    with pytest.raises(UserError, match=f"data.augment.{key}="):
        Augment(**{key: value})


def test_as_input_normalises_with_the_backbones_statistics():
    images = torch.tensor([0, 255, 51], dtype=torch.uint8).view(1, 1, 1, 3)
    x = as_input(images, 3, ((0.5, 0.4, 0.2), (0.5, 0.2, 0.1)))
    # (v / 255 - mean) / std per channel, the grey image repeated to three channels
    expected = torch.tensor([[-1.0, 1.0, -0.6], [-2.0, 3.0, -1.0], [-2.0, 8.0, 0.0]])
    torch.testing.assert_close(x[0], expected.view(3, 1, 3))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_the_digit_preset_crops_without_flipping_and_evaluates_whole_images():
    """`+data/augment=digits`: random boxes of 70-100% of the image at the backbone's input
    size, never mirrored (a mirrored digit is another symbol), evaluation the image itself."""
    from hydra.utils import instantiate

    from transferlab.config import compose

    augment = instantiate(compose(["data=mnist_usps", "+data/augment=digits"]).data.augment)
    assert isinstance(augment, Augment) and augment.size == 28
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    params = augment.sample(64, 28, 28, torch.Generator().manual_seed(0))
    assert not params.flip.any()
    area = (params.boxes[:, 2] * params.boxes[:, 3]).float() / 28 ** 2
    assert area.min() >= 0.7 * 0.9 and area.max() <= 1.0  # rounding to whole pixels
    assert not torch.equal(augment.apply(images, params), images)
    assert torch.equal(augment.center(images), images)
