"""Bad datasets, image folders and checkpoint files end with one line naming the problem, exit code 2, no
traceback, and nothing written into the run folder but its config."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from bissl.data import embedded
from tests.cli_run import run_cli

TINY = ["data.pretext=synthetic", "model.width=4", "model.blocks=[1]", "data.image_size=8"]
FINETUNE = [*TINY, "finetune.epochs=1", "finetune.batch_size=2"]


def image_folder(
    root: Path, classes: list[str], test_classes: list[str] | None = None, per_class: int = 3
) -> Path:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png``: a few 8x8 images per class."""
    for split, names in (("train", classes), ("test", classes if test_classes is None else test_classes)):
        for index, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(per_class):
                colour = (40 * index % 256, 60 * number % 256, 128)
                Image.new("RGB", (8, 8), colour).save(folder / f"{number}.png")
    return root


def finetune_on(folder: str, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--out", str(out), f"data.downstream={folder}", *FINETUNE, *extra]


def one_class(tmp: Path) -> list[str]:
    return finetune_on(f"folder:{image_folder(tmp / 'images', ['cat'])}", tmp / "o")


def class_folder_loop(tmp: Path) -> list[str]:
    folder = image_folder(tmp / "images", ["cat", "dog"])
    os.symlink("loop", folder / "train" / "loop")
    return finetune_on(f"folder:{folder}", tmp / "o")


def image_file_loop(tmp: Path) -> list[str]:
    folder = image_folder(tmp / "images", ["cat", "dog"])
    os.symlink("b.png", folder / "train" / "dog" / "a.png")
    os.symlink("a.png", folder / "train" / "dog" / "b.png")
    return finetune_on(f"folder:{folder}", tmp / "o")


def unknown_test_class(tmp: Path) -> list[str]:
    folder = image_folder(tmp / "images", ["cat", "dog"], test_classes=["cat", "dog", "owl"])
    return finetune_on(f"folder:{folder}", tmp / "o")


def limit_below_classes_folder(tmp: Path) -> list[str]:
    folder = image_folder(tmp / "images", [f"class{i}" for i in range(10)])
    return finetune_on(f"folder:{folder}", tmp / "o", "data.downstream_limit=5")


def limit_below_classes_arrays(tmp: Path) -> list[str]:
    return finetune_on("synthetic", tmp / "o", "data.downstream_limit=5")


def tilde_folder(tmp: Path) -> list[str]:
    return finetune_on("folder:~/nowhere", tmp / "o")


def checkpoint_folder(tmp: Path) -> Path:
    folder = tmp / "run"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "pretext.pt").write_bytes(b"")
    return folder


def pretext_checkpoint_folder(tmp: Path) -> list[str]:
    return ["bilevel", "--out", str(tmp / "o"), *TINY, f"pretext_checkpoint={checkpoint_folder(tmp)}"]


def backbone_folder(tmp: Path) -> list[str]:
    return finetune_on("synthetic", tmp / "o", f"backbone={checkpoint_folder(tmp)}")


def import_of(path: Path, out: Path, layout: str = "torchvision") -> list[str]:
    return [
        "import",
        "--out",
        str(out),
        "--layout",
        layout,
        "--checkpoint",
        str(path),
        "model.backbone=resnet18",
    ]


def import_folder(tmp: Path) -> list[str]:
    return import_of(checkpoint_folder(tmp), tmp / "o")


def import_pickled(tmp: Path) -> list[str]:
    path = tmp / "pickled.ckpt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    return import_of(path, tmp / "o")


def import_other_method(tmp: Path) -> list[str]:
    """A solo-learn VICReg checkpoint into pretext.method=simclr (refused before any weight is loaded)."""
    path = tmp / "vicreg.ckpt"
    state = {"backbone.conv1.weight": torch.zeros(1), "projector.0.weight": torch.zeros(2, 2)}
    torch.save({"state_dict": state, "hyper_parameters": {"cfg": {"method": "vicreg"}}}, path)
    return import_of(path, tmp / "o", layout="solo-learn")


Case = tuple[str, Callable[[Path], list[str]], tuple[str, ...]]

CASES: list[Case] = [
    ("folder with one class", one_class, ("at least 2 class subfolders", "images/train")),
    ("symlink loop among the class folders", class_folder_loop, ("train/loop is a symbolic link loop",)),
    ("symlink loop among the images", image_file_loop, ("train/dog/a.png is a symbolic link loop",)),
    ("test class that train lacks", unknown_test_class, ("owl", "images/test", "images/train")),
    (
        "downstream limit below the classes of a folder",
        limit_below_classes_folder,
        ("data.downstream_limit=5", "10 classes", "at least 12"),
    ),
    (
        "downstream limit below the classes of an array set",
        limit_below_classes_arrays,
        ("data.downstream_limit=5", "10 classes", "at least 12"),
    ),
    ("folder:~ is expanded", tilde_folder, ("home/nowhere (folder:~/nowhere) does not exist",)),
    ("pretext checkpoint is a folder", pretext_checkpoint_folder, ("is a folder, not a checkpoint file",)),
    (
        "backbone is a folder",
        backbone_folder,
        ("is a folder, not a checkpoint file", "checkpoints/pretext.pt"),
    ),
    ("import of a folder", import_folder, ("is a folder, not a checkpoint file",)),
    ("import of a pickled checkpoint", import_pickled, ("imported.trust_pickle=true", "argparse.Namespace")),
    (
        "import of another method's checkpoint",
        import_other_method,
        (
            "holds a VICReg model (solo-learn method 'vicreg') but pretext.method is 'simclr'",
            "pretext.method=vicreg",
        ),
    ),
]
# Files a case may leave besides config.yaml: fine-tuning draws the split of a valid set before reading the
# backbone.
MAY_WRITE = {"backbone is a folder": {"splits/synthetic.json"}}


@pytest.fixture(autouse=True)
def _no_shared_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $BISSL_DATA, a private home (so ``~`` is known) and no system Fashion-MNIST."""
    monkeypatch.delenv("BISSL_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(embedded, "SYSTEM_FASHION_MNIST", str(tmp_path / "no-system-copy"))


def written(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize(("name", "make_argv", "expected"), CASES, ids=[c[0] for c in CASES])
def test_data_error_is_one_line_exit_2_before_any_work(
    name: str,
    make_argv: Callable[[Path], list[str]],
    expected: tuple[str, ...],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = make_argv(tmp_path)
    out = tmp_path / "o"
    out.mkdir()  # an existing folder is kept on errors: what the failing command wrote stays visible
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err and "\x1b" not in err, err
    for text in expected:
        assert text in err, err
    assert set(written(out)) <= {"config.yaml", *MAY_WRITE.get(name, set())}, written(out)


def test_one_class_folder_works_once_a_second_class_is_added(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = one_class(tmp_path)
    (tmp_path / "o").mkdir()  # kept after the error, as a folder of earlier runs would be
    code, err = run_cli(argv, capsys)
    assert code == 2 and "at least 2 class subfolders" in err, err
    assert not (tmp_path / "o" / "splits").exists()
    image_folder(tmp_path / "images", ["cat", "dog"])
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (tmp_path / "o" / "summary.json").is_file()
