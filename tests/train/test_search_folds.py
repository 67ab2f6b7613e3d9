"""Model selection by k-fold cross-validation (``search.folds``): stratified folds that cover the labelled
pool once, trials scored by the mean over their folds, folds not repeated on resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import bissl.train.search.fit as fit_module
from bissl.data.embedded import synthetic_dataset
from bissl.data.folds import fold_assignment, fold_split
from bissl.errors import DataError
from bissl.runtime import GracefulStop
from bissl.train.search import run_search, study_name_for
from tests.train.test_search import RecordingFinetune, tiny_config


def test_folds_are_stratified_balanced_and_seeded() -> None:
    labels = torch.tensor([0] * 10 + [1] * 7 + [2] * 3)
    assignment = fold_assignment(labels, 5, seed=3)
    assert torch.equal(assignment, fold_assignment(labels, 5, seed=3))
    assert not torch.equal(assignment, fold_assignment(labels, 5, seed=4))
    sizes = torch.bincount(assignment, minlength=5)
    assert int(sizes.sum()) == 20 and int(sizes.max() - sizes.min()) <= 1
    for label in range(3):
        per_fold = torch.bincount(assignment[labels == label], minlength=5)
        assert int(per_fold.max() - per_fold.min()) <= 1
    with pytest.raises(DataError, match=r"search\.folds"):
        fold_assignment(labels[:3], 5, seed=0)


def test_fold_splits_partition_the_pool() -> None:
    data = synthetic_dataset(num_samples=30, num_classes=3, channels=1, image_size=8, seed=0)
    train, val = data.subset(torch.arange(24)), data.subset(torch.arange(24, 30))
    held_out = [fold_split(train, val, index, 3, seed=0) for index in range(3)]
    assert all(len(fit) + len(check) == 30 for fit, check in held_out)
    images = torch.cat([check.images for _, check in held_out])
    assert sorted(map(bytes, images.flatten(1).numpy())) == sorted(map(bytes, data.images.flatten(1).numpy()))
    assert held_out[0][0].mean == train.mean


def test_trial_value_is_the_mean_over_folds_and_folds_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tiny_config("search.trials=2", "search.folds=3")
    assert study_name_for(config) != study_name_for(tiny_config("search.trials=2"))
    recorder = RecordingFinetune()
    monkeypatch.setattr(fit_module, "run_finetune", recorder)
    found = run_search(config, tmp_path, stop=GracefulStop())
    assert [call["fold"] for call in recorder.calls] == [(i, 3) for i in range(3)] * 2
    for trial in found["trials"]:
        folder = tmp_path / "trials" / f"trial-{trial['number']:04d}"
        values = [
            json.loads((folder / f"fold-{i}" / "summary.json").read_text())["fold_run"]["best"]["val_top1"]
            for i in range(3)
        ]
        assert trial["folds"] == values
        assert trial["value"] == pytest.approx(sum(values) / 3)
    # A trial stopped after its folds: the rerun reads their summaries and trains nothing.
    trial_config = fit_module._with_settings(config, lr=0.01, weight_decay=1e-4, epochs=1, seed=0)
    folder = tmp_path / "trials" / "trial-0009"
    first = fit_module._cross_validate(trial_config, folder, GracefulStop(), True)
    recorder.calls.clear()
    assert fit_module._cross_validate(trial_config, folder, GracefulStop(), True) == first
    assert recorder.calls == []
