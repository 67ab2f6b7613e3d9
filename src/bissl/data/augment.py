"""Batched view augmentations on the training device, with per-sample random parameters (kornia).

The reference augments every image on its own in PIL inside DataLoader workers; here one call augments a
whole batch where the batch lives. Random parameters are drawn on the CPU from torch's global generator, or
from a CPU ``torch.Generator`` passed to ``forward``; so the views are fixed by that generator's state and
the input, whatever the device the images are on (up to floating-point differences between devices).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

from bissl.errors import DataError

REFERENCE_CROP_SCALE = (0.08, 1.0)
REFERENCE_CROP_RATIO = (0.5, 1.0)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in 0..255 to float32 in [0, 1]; floating images are taken as already in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    if images.is_floating_point():
        return images.to(torch.float32)
    raise DataError(f"images must be uint8 (0..255) or floating point (0..1), got {images.dtype}")


class Normalize(nn.Module):
    """Subtract the per-channel mean and divide by the per-channel std (both in [0, 1] units).

    The statistics are plain numbers, not buffers, so the module works on any device without ``.to``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise DataError(f"normalisation needs one mean and one std per channel, got {mean} and {std}")
        if any(s <= 0 for s in std):
            raise DataError(f"normalisation std must be positive, got {tuple(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            shape = (1, len(self.mean), 1, 1)
            mean = torch.tensor(self.mean, dtype=like.dtype).view(shape).to(like.device)
            std = torch.tensor(self.std, dtype=like.dtype).view(shape).to(like.device)
            self._cache[key] = (mean, std)
        return self._cache[key]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != len(self.mean):
            raise DataError(f"images have {images.shape[1]} channels but normalisation has {len(self.mean)}")
        mean, std = self._stats(images)
        return (images - mean) / std


def blur_kernel_size(image_size: int) -> int:
    """Gaussian blur kernel side: about 10% of the image side, odd, at least 3."""
    size = int(0.1 * image_size)
    if size % 2 == 0:
        size += 1
    return max(size, 3)


@dataclass(frozen=True)
class ViewOptions:
    """Random augmentation settings of the two SSL views (defaults: docs/method.md: Published settings).

    ``blur_p`` and ``solarize_p`` hold (view 1, view 2) probabilities. ``reference_crop`` replaces the crop
    range by the reference's (scale (0.08, 1), aspect ratio (0.5, 1.0)).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    reference_crop: bool = False
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: tuple[float, float] = (1.0, 0.1)
    solarize_p: tuple[float, float] = (0.0, 0.2)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        probabilities = {
            "jitter_p": (self.jitter_p,),
            "grayscale_p": (self.grayscale_p,),
            "flip_p": (self.flip_p,),
            "blur_p": self.blur_p,
            "solarize_p": self.solarize_p,
        }
        for name, values in probabilities.items():
            if any(not 0.0 <= p <= 1.0 for p in values):
                shown = values[0] if len(values) == 1 else values
                raise DataError(f"augmentation probabilities must lie in [0, 1]: {name} is {shown}")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise DataError(
                f"augmentation crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}"
            )
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise DataError(f"augmentation crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise DataError(f"augmentation blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")
        if len(self.jitter) != 4 or any(j < 0 for j in self.jitter):
            raise DataError(f"augmentation jitter needs four non-negative strengths, got {self.jitter}")

    @property
    def crop_range(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The (scale, aspect ratio) ranges the crops are drawn from."""
        if self.reference_crop:
            return REFERENCE_CROP_SCALE, REFERENCE_CROP_RATIO
        return self.crop_scale, self.crop_ratio

    def color_jitter(self, channels: int) -> tuple[float, float, float, float]:
        """Jitter strengths for this channel count: grey images get brightness and contrast only."""
        brightness, contrast, saturation, hue = self.jitter
        return (brightness, contrast, saturation, hue) if channels == 3 else (brightness, contrast, 0.0, 0.0)


@contextmanager
def _sampling_from(generator: torch.Generator | None) -> Iterator[None]:
    """Draw from ``generator`` (advancing it) through torch's global CPU generator, then restore that."""
    if generator is None:
        yield
        return
    if generator.device.type != "cpu":
        raise ValueError("augmentations draw their parameters on the CPU: pass a CPU torch.Generator")
    saved = torch.get_rng_state()
    torch.set_rng_state(generator.get_state())
    try:
        yield
        generator.set_state(torch.get_rng_state())
    finally:
        torch.set_rng_state(saved)


class _CpuSampledAugment(nn.Module):
    """Keeps kornia's parameter sampling on the CPU generator even after ``.to(device)``."""

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> Any:
        out = super()._apply(fn, recurse)
        for module in self.modules():
            if isinstance(module, K.base._BasicAugmentationBase):
                module.set_rng_device_and_dtype(torch.device("cpu"), torch.float32)
        return out


def _pair(values: Sequence[float], name: str) -> tuple[float, float]:
    """Two floats from a config value, or a DataError naming the option."""
    if len(values) != 2:
        raise DataError(f"augmentation {name} needs two values, got {tuple(values)}")
    return float(values[0]), float(values[1])


def _check_batch(images: torch.Tensor, channels: int) -> None:
    if images.dim() != 4 or images.shape[1] != channels:
        raise DataError(f"expected an image batch (N, {channels}, H, W), got shape {tuple(images.shape)}")


class TwoViewAugment(_CpuSampledAugment):
    """Two differently augmented, normalised float32 views of each image of a batch (docs/method.md: Published settings).

    Both views: random resized crop to ``image_size``, horizontal flip, colour jitter (brightness and
    contrast only for grey images), random grayscale (colour images only). View 1: Gaussian blur with
    probability ``blur_p[0]``; view 2: blur with ``blur_p[1]`` and solarize with ``solarize_p[1]``.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        reference_crop: bool = False,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: tuple[float, float] = (1.0, 0.1),
        solarize_p: tuple[float, float] = (0.0, 0.2),
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        flip_p: float = 0.5,
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise DataError(f"view augmentations support 1 or 3 channels, got {channels}")
        self.image_size = image_size
        self.channels = channels
        if len(jitter) != 4:
            raise DataError(f"augmentation jitter needs four strengths, got {tuple(jitter)}")
        self.options = ViewOptions(
            crop_scale=_pair(crop_scale, "crop_scale"),
            crop_ratio=_pair(crop_ratio, "crop_ratio"),
            reference_crop=reference_crop,
            jitter=(float(jitter[0]), float(jitter[1]), float(jitter[2]), float(jitter[3])),
            jitter_p=jitter_p,
            grayscale_p=grayscale_p,
            blur_p=_pair(blur_p, "blur_p"),
            solarize_p=_pair(solarize_p, "solarize_p"),
            blur_sigma=_pair(blur_sigma, "blur_sigma"),
            flip_p=flip_p,
        )
        self.view1 = self._view_pipeline(self.options.blur_p[0], self.options.solarize_p[0])
        self.view2 = self._view_pipeline(self.options.blur_p[1], self.options.solarize_p[1])
        self.normalize = Normalize(mean, std)

    def _view_pipeline(self, blur_p: float, solarize_p: float) -> nn.Sequential:
        options = self.options
        scale, ratio = options.crop_range
        size = (self.image_size, self.image_size)
        steps: list[nn.Module] = [
            K.RandomResizedCrop(size, scale=scale, ratio=ratio, cropping_mode="resample"),
            K.RandomHorizontalFlip(p=options.flip_p),
        ]
        if options.jitter_p > 0 and any(options.color_jitter(self.channels)):
            steps.append(K.ColorJitter(*options.color_jitter(self.channels), p=options.jitter_p))
        if self.channels == 3 and options.grayscale_p > 0:
            steps.append(K.RandomGrayscale(p=options.grayscale_p))
        if blur_p > 0:
            kernel = blur_kernel_size(self.image_size)
            steps.append(K.RandomGaussianBlur((kernel, kernel), options.blur_sigma, p=blur_p))
        if solarize_p > 0:
            steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))
        return nn.Sequential(*steps)

    def unnormalized(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two views in [0, 1], before normalisation."""
        _check_batch(images, self.channels)
        batch = to_float(images)
        with _sampling_from(generator):
            return self.view1(batch), self.view2(batch)

    def photometric(
        self, view1: torch.Tensor, view2: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything after crop and flip (jitter, grayscale, blur, solarize, normalise) on views already
        cropped at ``image_size``, e.g. by loader workers (``folder_stream.LoaderStream``)."""
        _check_batch(view1, self.channels)
        _check_batch(view2, self.channels)
        with _sampling_from(generator):
            first, second = self.view1[2:](to_float(view1)), self.view2[2:](to_float(view2))
        return self.normalize(first), self.normalize(second)

    def forward(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of (N, C, H, W) images; (N, 2, C, S, S) input holds views already cropped and flipped."""
        if images.dim() == 5:
            return self.photometric(images[:, 0], images[:, 1], generator)
        view1, view2 = self.unnormalized(images, generator)
        return self.normalize(view1), self.normalize(view2)


class DownstreamAugment(_CpuSampledAugment):
    """Downstream images: random resized crop + flip when training; resize + centre crop for evaluation.

    Evaluation leaves images already ``image_size`` square untouched (then only normalises).
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
    ) -> None:
        super().__init__()
        if channels < 1:
            raise DataError(f"images need at least one channel, got {channels}")
        self.options = ViewOptions(
            crop_scale=_pair(crop_scale, "crop_scale"),
            crop_ratio=_pair(crop_ratio, "crop_ratio"),
            flip_p=flip_p,
        )
        self.image_size = image_size
        self.channels = channels
        self.train_pipeline = nn.Sequential(
            K.RandomResizedCrop(
                (image_size, image_size),
                scale=self.options.crop_scale,
                ratio=self.options.crop_ratio,
                cropping_mode="resample",
            ),
            K.RandomHorizontalFlip(p=self.options.flip_p),
        )
        self.normalize = Normalize(mean, std)

    def eval_view(self, images: torch.Tensor) -> torch.Tensor:
        """Resize the shorter side to ``image_size`` (bilinear, antialiased), then crop the centre square."""
        height, width = images.shape[-2:]
        size = self.image_size
        if (height, width) == (size, size):
            return images
        if min(height, width) != size:
            factor = size / min(height, width)
            new_size = (max(size, round(height * factor)), max(size, round(width * factor)))
            images = F.interpolate(
                images, size=new_size, mode="bilinear", antialias=True, align_corners=False
            )
            images = images.clamp(0.0, 1.0)
            height, width = new_size
        top, left = (height - size) // 2, (width - size) // 2
        return images[..., top : top + size, left : left + size]

    def forward(
        self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        _check_batch(images, self.channels)
        batch = to_float(images)
        if train:
            with _sampling_from(generator):
                batch = self.train_pipeline(batch)
        else:
            batch = self.eval_view(batch)
        return self.normalize(batch)


class PilTwoViews:
    """The reference's way: two views of one PIL image, each through a per-sample torchvision pipeline."""

    def __init__(self, view1: Callable[[Any], torch.Tensor], view2: Callable[[Any], torch.Tensor]) -> None:
        self.view1 = view1
        self.view2 = view2

    def __call__(self, image: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view1(image), self.view2(image)


def reference_pil_transform(
    image_size: int,
    channels: int,
    mean: Sequence[float],
    std: Sequence[float],
    options: ViewOptions | None = None,
) -> PilTwoViews:
    """Per-sample PIL transforms (torchvision v1) doing what :class:`TwoViewAugment` does; for benchmarks."""
    from torchvision import transforms as T

    options = options or ViewOptions()
    scale, ratio = options.crop_range
    kernel = blur_kernel_size(image_size)

    def view(blur_p: float, solarize_p: float) -> Callable[[Any], torch.Tensor]:
        steps: list[Any] = [
            T.RandomResizedCrop(image_size, scale=scale, ratio=ratio, antialias=True),
            T.RandomHorizontalFlip(p=options.flip_p),
            T.RandomApply([T.ColorJitter(*options.color_jitter(channels))], p=options.jitter_p),
        ]
        if channels == 3:
            steps.append(T.RandomGrayscale(p=options.grayscale_p))
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=options.blur_sigma)], p=blur_p))
        steps += [
            T.RandomSolarize(threshold=128, p=solarize_p),
            T.ToTensor(),
            T.Normalize(mean=list(mean), std=list(std)),
        ]
        return T.Compose(steps)

    return PilTwoViews(
        view(options.blur_p[0], options.solarize_p[0]), view(options.blur_p[1], options.solarize_p[1])
    )
