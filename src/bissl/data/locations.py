"""Where each file-stored set lives: its folder under every data root, in the one search order
(:func:`bissl.data.registry.data_roots`), or an image folder's own path; finding it there, or downloading it
into the first data root; and how an image folder's name becomes its path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bissl.data.registry import DatasetInfo, Downloader, data_roots, default_download_root
from bissl.errors import DataError


def locations(info: DatasetInfo, root: str | None) -> list[Path]:
    """Every folder where ``info`` is looked for: its folder under each data root (:func:`data_roots`)."""
    if info.fixed_root is not None:
        return [Path(info.fixed_root)]
    return [base / info.folder for base in data_roots(root)]


def find_folder(info: DatasetInfo, root: str | None) -> Path | None:
    """The first searched folder that holds the dataset's marker file, or None."""
    for folder in locations(info, root):
        if (folder / info.marker).exists():
            return folder
    return None


def dataset_folder(info: DatasetInfo, root: str | None, download: bool) -> Path:
    """The dataset's folder, downloaded with torchvision first when allowed and missing."""
    folder = find_folder(info, root)
    if folder is not None:
        return folder
    searched = ", ".join(str(place) for place in locations(info, root))
    if info.fixed_root is not None:
        state = "has no train/ folder" if Path(info.fixed_root).is_dir() else "does not exist"
        raise DataError(
            f"image folder {info.fixed_root} ({info.name}) {state}; folder:PATH needs PATH/train/<class>/ "
            "images and PATH/test/<class>/ (or val/)"
        )
    if download and info.download is not None:
        target = default_download_root(root)
        try:
            info.download(target)
        except Exception as error:  # any failure of a download is reported as one line
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise DataError(
                f"download of {info.name} into {target} failed ({message}); {info.hint or 'fetch it by hand'}"
            ) from None
        folder = Path(target) / info.folder
        if (folder / info.marker).exists():
            return folder
        raise DataError(f"download of {info.name} into {target} did not produce {folder / info.marker}")
    how = "pass data.download=true, " if info.download is not None else ""
    raise DataError(
        f"{info.name} not found in {searched}; {how}set data.root or BISSL_DATA to a folder holding "
        f"{info.folder}/{info.marker}" + (f" ({info.hint})" if info.hint else "")
    )


def folder_path(path: str) -> str:
    """The folder of ``folder:PATH``: ``~`` expanded; a relative path stays relative to the current folder."""
    return os.path.expanduser(path)


def torchvision_download(*calls: tuple[str, dict[str, Any]]) -> Downloader:
    """A downloader calling ``torchvision.datasets.<Class>(target, download=True, **options)`` in turn."""

    def download(target: str) -> None:
        import torchvision.datasets as tv

        for class_name, options in calls:
            getattr(tv, class_name)(target, download=True, **options)

    return download
