"""View augmentations: shapes, ranges, per-sample randomness, reproducibility, view asymmetry, crops."""

from __future__ import annotations

import kornia.augmentation as K
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from bissl.data.augment import (
    DownstreamAugment,
    Normalize,
    TwoViewAugment,
    blur_kernel_size,
    reference_pil_transform,
    to_float,
)
from bissl.errors import DataError

MEAN, STD = (0.4,), (0.2,)
IDENTITY = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "jitter_p": 0.0,
    "grayscale_p": 0.0,
    "blur_p": (0.0, 0.0),
    "solarize_p": (0.0, 0.0),
    "flip_p": 0.0,
}


def image_batch(count: int = 8, channels: int = 1, size: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, channels, size, size), dtype=torch.uint8, generator=generator)


def test_views_have_the_right_shape_dtype_and_range() -> None:
    augment = TwoViewAugment(12, 1, MEAN, STD)
    images = image_batch(size=20)
    view1, view2 = augment.unnormalized(images)
    for view in (view1, view2):
        assert view.shape == (8, 1, 12, 12) and view.dtype == torch.float32
        assert float(view.min()) >= 0.0 and float(view.max()) <= 1.0
    generator = torch.Generator().manual_seed(4)
    raw = augment.unnormalized(images, torch.Generator().manual_seed(4))
    normalised = augment(images, generator)
    for before, after in zip(raw, normalised):
        torch.testing.assert_close(after, (before - 0.4) / 0.2)


def test_each_sample_gets_its_own_parameters() -> None:
    augment = TwoViewAugment(16, 1, MEAN, STD)
    same_image = image_batch(count=1).expand(16, -1, -1, -1).contiguous()
    view1, view2 = augment(same_image)
    assert len({view.numpy().tobytes() for view in view1}) == 16
    assert not torch.equal(view1, view2)


def test_reproducible_under_manual_seed_and_generator() -> None:
    augment = TwoViewAugment(16, 3, (0.5,) * 3, (0.25,) * 3)
    images = image_batch(channels=3)
    torch.manual_seed(11)
    first = augment(images)
    torch.manual_seed(11)
    second = augment(images)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    global_state = torch.get_rng_state()
    with_generator = augment(images, torch.Generator().manual_seed(11))
    assert torch.equal(torch.get_rng_state(), global_state)
    assert all(torch.equal(a, b) for a, b in zip(first, with_generator))
    generator = torch.Generator().manual_seed(11)
    augment(images, generator)
    assert not torch.equal(augment(images, generator)[0], first[0])


def test_moving_the_module_keeps_sampling_on_the_cpu_generator() -> None:
    augment = TwoViewAugment(16, 1, MEAN, STD)
    images = image_batch()
    before = augment(images, torch.Generator().manual_seed(2))
    augment.to(torch.float64)
    after = augment(images, torch.Generator().manual_seed(2))
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_identity_settings_give_the_input_back() -> None:
    augment = TwoViewAugment(16, 1, MEAN, STD, **IDENTITY)  # type: ignore[arg-type]
    images = image_batch()
    view1, view2 = augment.unnormalized(images)
    torch.testing.assert_close(view1, to_float(images), atol=1e-5, rtol=0)
    torch.testing.assert_close(view2, to_float(images), atol=1e-5, rtol=0)


def test_solarize_only_in_view_two_blur_only_where_asked() -> None:
    settings = dict(IDENTITY, solarize_p=(0.0, 1.0), blur_p=(1.0, 0.0), blur_sigma=(2.0, 2.0))
    augment = TwoViewAugment(16, 1, MEAN, STD, **settings)  # type: ignore[arg-type]
    images = image_batch()
    pixels = to_float(images)
    view1, view2 = augment.unnormalized(images)
    torch.testing.assert_close(view2, torch.where(pixels < 0.5, pixels, 1.0 - pixels), atol=1e-5, rtol=0)
    kernel = blur_kernel_size(16)
    taps = torch.exp(-((torch.arange(kernel) - kernel // 2) ** 2) / (2 * 2.0**2))
    taps = taps / taps.sum()
    padded = F.pad(pixels, (kernel // 2,) * 4, mode="reflect")
    blurred = F.conv2d(F.conv2d(padded, taps.view(1, 1, 1, -1)), taps.view(1, 1, -1, 1))
    torch.testing.assert_close(view1, blurred, atol=1e-4, rtol=0)
    default = TwoViewAugment(16, 1, MEAN, STD)
    assert not any("Solarize" in type(step).__name__ for step in default.view1)
    assert [step.p for step in default.view2 if "Solarize" in type(step).__name__] == [0.2]


def test_grey_images_get_brightness_and_contrast_only() -> None:
    grey = TwoViewAugment(16, 1, MEAN, STD)
    assert grey.options.color_jitter(1) == (0.4, 0.4, 0.0, 0.0)
    assert not any("Grayscale" in type(step).__name__ for step in grey.view1)
    settings = dict(IDENTITY, jitter_p=1.0, jitter=(0.4, 0.0, 0.0, 0.0))
    brightness = TwoViewAugment(16, 1, MEAN, STD, **settings)  # type: ignore[arg-type]
    flat = torch.full((32, 1, 16, 16), 100, dtype=torch.uint8)
    view1, _ = brightness.unnormalized(flat)
    factors = view1[:, 0, 0, 0] / (100 / 255)
    assert bool((factors >= 0.6 - 1e-5).all() and (factors <= 1.4 + 1e-5).all()) and factors.std() > 0.05
    torch.testing.assert_close(view1, view1[:, :, :1, :1].expand_as(view1))


def test_colour_grayscale_makes_equal_channels() -> None:
    settings = dict(IDENTITY, grayscale_p=1.0)
    augment = TwoViewAugment(16, 3, (0.5,) * 3, (0.25,) * 3, **settings)  # type: ignore[arg-type]
    view1, view2 = augment.unnormalized(image_batch(channels=3))
    for view in (view1, view2):
        torch.testing.assert_close(view[:, 0], view[:, 1])
        torch.testing.assert_close(view[:, 1], view[:, 2])


def crop_aspect_ratios(augment: TwoViewAugment, count: int = 2000) -> torch.Tensor:
    crop = augment.view1[0]
    assert isinstance(crop, K.RandomResizedCrop)
    boxes = crop.forward_parameters(torch.Size((count, 1, 400, 400)))["src"]
    widths = boxes[:, 1, 0] - boxes[:, 0, 0] + 1
    heights = boxes[:, 2, 1] - boxes[:, 1, 1] + 1
    return widths / heights


def test_reference_crop_changes_the_aspect_ratio_range() -> None:
    standard = crop_aspect_ratios(TwoViewAugment(16, 1, MEAN, STD))
    reference = crop_aspect_ratios(TwoViewAugment(16, 1, MEAN, STD, reference_crop=True))
    assert (
        float(standard.min()) > 0.73
        and float(standard.max()) < 1.36
        and (standard > 1.05).float().mean() > 0.2
    )
    assert float(reference.min()) > 0.48 and float(reference.max()) < 1.03
    assert (reference < 0.7).float().mean() > 0.25
    assert TwoViewAugment(16, 1, MEAN, STD, reference_crop=True).options.crop_range == (
        (0.08, 1.0),
        (0.5, 1.0),
    )


def test_kernel_size_is_odd_and_about_ten_percent() -> None:
    assert [blur_kernel_size(size) for size in (8, 28, 32, 96, 224)] == [3, 3, 3, 9, 23]


def test_bad_inputs_and_options() -> None:
    augment = TwoViewAugment(16, 1, MEAN, STD)
    with pytest.raises(DataError, match="shape"):
        augment(image_batch(channels=3))
    with pytest.raises(DataError, match="uint8"):
        augment(image_batch().to(torch.int32))
    with pytest.raises(DataError, match="probabilities"):
        TwoViewAugment(16, 1, MEAN, STD, jitter_p=1.5)
    with pytest.raises(DataError, match="1 or 3"):
        TwoViewAugment(16, 2, (0.5, 0.5), (0.2, 0.2))


def test_downstream_eval_is_identity_at_native_size() -> None:
    augment = DownstreamAugment(16, 1, MEAN, STD)
    images = image_batch()
    torch.testing.assert_close(augment(images, train=False), (to_float(images) - 0.4) / 0.2)


def test_downstream_eval_resizes_the_short_side_and_crops_the_centre() -> None:
    augment = DownstreamAugment(8, 1, (0.0,), (1.0,))
    images = torch.randint(0, 256, (2, 1, 16, 24), dtype=torch.uint8)
    resized = F.interpolate(
        to_float(images), size=(8, 12), mode="bilinear", antialias=True, align_corners=False
    )
    torch.testing.assert_close(augment(images, train=False), resized[..., :, 2:10])


def test_downstream_train_is_random_per_sample() -> None:
    augment = DownstreamAugment(12, 1, MEAN, STD, crop_scale=(0.2, 1.0))
    same_image = image_batch(count=1).expand(8, -1, -1, -1).contiguous()
    out = augment(same_image, train=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == (8, 1, 12, 12)
    assert len({view.numpy().tobytes() for view in out}) == 8
    again = augment(same_image, train=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_normalize_and_to_float() -> None:
    images = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)
    floats = to_float(images)
    assert floats.dtype == torch.float32 and floats.flatten().tolist() == pytest.approx([0, 1, 0.2, 0.4])
    out = Normalize((0.5, 0.2), (0.5, 0.1))(floats)
    assert out.flatten().tolist() == pytest.approx([-1.0, 1.0, 0.0, 2.0])
    with pytest.raises(DataError, match="positive"):
        Normalize((0.5,), (0.0,))


def test_reference_pil_transform_gives_two_normalised_views() -> None:
    augment = TwoViewAugment(16, 1, MEAN, STD, **dict(IDENTITY, solarize_p=(0.0, 1.0)))  # type: ignore[arg-type]
    transform = reference_pil_transform(16, 1, MEAN, STD, augment.options)
    pixels = np.random.default_rng(0).integers(0, 256, size=(16, 16), dtype=np.uint8)
    view1, view2 = transform(Image.fromarray(pixels))
    assert view1.shape == (1, 16, 16) and view2.shape == (1, 16, 16)
    expected = torch.from_numpy(pixels).float().div(255)
    torch.testing.assert_close(view1[0], (expected - 0.4) / 0.2, atol=1e-5, rtol=0)
    solarized = torch.from_numpy(np.where(pixels >= 128, 255 - pixels, pixels)).float().div(255)
    torch.testing.assert_close(view2[0], (solarized - 0.4) / 0.2, atol=1e-5, rtol=0)
