"""The decoded-image cache: a photo set's split decoded at one image size, kept as uint8 tensors next to the
data (``<folder>/.bissl-cache/<split>-<S>px.pt``, ``-grey`` for one channel), else under the download root,
and reused while it matches the split's file list, labels, size and channels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import torch

from bissl.checkpoint import save_checkpoint
from bissl.data.registry import ImageList, default_download_root

CACHE_FOLDER = ".bissl-cache"
CACHE_VERSION = 1


def cache_key(listing: ImageList, image_size: int, channels: int = 3) -> str:
    """What a cache file must match: the files, their labels, the class count, the size and the channels."""
    grey = ":grey" if channels == 1 else ""
    digest = hashlib.sha256(f"{CACHE_VERSION}:{image_size}:{listing.num_classes}{grey}".encode())
    digest.update("\n".join(listing.files).encode())
    digest.update(listing.labels.numpy().tobytes())
    return digest.hexdigest()


def cache_files(name: str, folder: Path, split: str, image_size: int, channels: int = 3) -> list[Path]:
    """Where decoded images are cached: next to the data, else under the download root."""
    file = f"{split}-{image_size}px.pt" if channels == 3 else f"{split}-{image_size}px-grey.pt"
    safe = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    fallback = (
        Path(default_download_root(None))
        / CACHE_FOLDER
        / f"{name.replace(':', '_').replace('/', '_')}-{safe}"
    )
    return [folder / CACHE_FOLDER / file, fallback / file]


def cached_images(
    name: str,
    folder: Path,
    split: str,
    listing: ImageList,
    image_size: int,
    channels: int,
    decode: Callable[[], torch.Tensor],
) -> torch.Tensor:
    """The split's images at ``image_size`` (uint8 (N, C, S, S)): from the cache when it matches the listing,
    else ``decode()``, saved into the first cache place that can be written."""
    key = cache_key(listing, image_size, channels)
    candidates = cache_files(name, folder, split, image_size, channels)
    for path in candidates:
        if path.is_file():
            try:
                cached = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # a damaged cache is rebuilt
                continue
            if isinstance(cached, dict) and cached.get("key") == key:
                images: torch.Tensor = cached["images"]
                return images
    images = decode()
    for path in candidates:
        try:
            save_checkpoint(path, {"key": key, "images": images})
            break
        except OSError:
            continue
    return images
