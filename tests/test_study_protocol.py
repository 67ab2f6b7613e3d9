"""The confirmatory study's machinery on tiny synthetic data: arms fine-tuned at the reference arm's chosen
setting (``study.shared_hyperparameters``), secondary arms on fewer pipeline seeds, the primary hypotheses
(one-sided, Holm over H1 and H2) kept apart from the secondary family, and ``bissl study --plan``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bissl import cli
from bissl.eval.stats import paired_comparison
from tests.test_study import SETTINGS

ARMS: list[dict[str, Any]] = [
    {"name": "baseline"},
    {"name": "extra", "extra_pretext": True, "own_search": False},
    {"name": "first-order", "bilevel": True, "overrides": ["bilevel.solver=identity"]},
    {
        "name": "short",
        "bilevel": True,
        "seeds": 1,
        "own_search": False,
        "overrides": ["bilevel.alternations=1"],
    },
]
STUDY = {
    "arms": ARMS,
    "pipeline_seeds": [1, 2, 3],
    "reference": "baseline",
    "shared_hyperparameters": True,
    "primary_arm": "first-order",
    "bn_control": False,
}


@pytest.fixture
def study_config(tmp_path: Path) -> Path:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"study": STUDY}))
    return config


def test_plan_then_run_then_plan(study_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, out = study_config, study_config.parent / "run"
    assert cli.main(["study", "--plan", "--config", str(config), "--out", str(out), *SETTINGS]) == 0
    before = capsys.readouterr().out.splitlines()
    # pretrain; per seed: baseline finetune + alignment, extra: extra-pretext + shared + alignment,
    # first-order: warmup + bilevel + finetune + shared + alignment; short (seed 1): warmup + bilevel + shared +
    # alignment
    expected = 1 + 3 * (2 + 3 + 5) + 4
    assert before[0] == f"0 of {expected} parts finished; to run:"
    assert "  first-order/seed-2/finetune-shared" in "\n".join(before)
    assert not out.exists(), "--plan must not write anything"

    assert cli.main(["--quiet", "study", "--config", str(config), "--out", str(out), *SETTINGS]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["expected_runs"] == 10 and results["finished_runs"] == 10
    assert set(results["arms"]["short"]["seeds"]) == {"1"}
    for seed in (1, 2, 3):
        reference = json.loads(
            (out / "arms" / "baseline" / f"seed-{seed}" / "finetune" / "summary.json").read_text()
        )
        chosen = reference["search"]["best"]
        for arm in ("extra", "first-order") + (("short",) if seed == 1 else ()):
            folder = out / "arms" / arm / f"seed-{seed}"
            shared = json.loads((folder / "finetune-shared" / "summary.json").read_text())
            assert shared["setting"] == {"lr": chosen["lr"], "weight_decay": chosen["weight_decay"]}
            assert all(run["lr"] == chosen["lr"] for run in shared["seeds"])
            assert (folder / "finetune").is_dir() == (arm == "first-order")

    by_seed = {
        arm: {int(s): block["test_top1_shared"] for s, block in results["arms"][arm]["seeds"].items()}
        for arm in ("baseline", "extra", "first-order")
    }
    tests = results["primary"]["tests"]
    assert results["primary"]["statistic"] == "test_top1_shared"
    for name, against in (("H1", "baseline"), ("H2", "extra")):
        expected_test = paired_comparison(
            [by_seed[against][s] for s in (1, 2, 3)], [by_seed["first-order"][s] for s in (1, 2, 3)]
        )
        assert tests[name]["against"] == against
        assert tests[name]["mean_difference"] == pytest.approx(expected_test["mean_difference"])
        assert tests[name]["t_pvalue_greater"] == pytest.approx(expected_test["t_pvalue_greater"])
    raw = sorted([tests["H1"]["t_pvalue_greater"], tests["H2"]["t_pvalue_greater"]])
    assert min(tests["H1"]["t_pvalue_greater_holm"], tests["H2"]["t_pvalue_greater_holm"]) == pytest.approx(
        min(1.0, 2 * raw[0])
    )
    secondary = results["comparison"]["test_top1_shared"]
    assert set(secondary) == {"extra", "short"}, (
        "the primary arm's H1 comparison is not in the secondary family"
    )
    assert set(results["comparison"]["test_top1"]) == {"first-order"}

    document = config.parent / "evidence.md"
    assert cli.main(["study-doc", str(out), "--out", str(document)]) == 0
    text = document.read_text()
    order = [
        text.index(title) for title in ("## Primary answers", "## Secondary questions", "## Table: every")
    ]
    assert order == sorted(order)
    h1 = tests["H1"]
    assert (
        "H1: first-order > baseline (fine-tuned test top-1 at the reference arm's chosen setting): " in text
    )
    assert f"{h1['mean_difference']:+.2f} points" in text and "n = 3 pipeline seeds" in text

    capsys.readouterr()
    assert cli.main(["study", "--plan", "--config", str(config), "--out", str(out), *SETTINGS]) == 0
    after = capsys.readouterr().out.splitlines()
    assert after[0] == f"{expected} of {expected} parts finished; to run:"
    assert after[1].startswith("estimated time of the parts to run: about 0.0 min")

    grown = yaml.safe_load(config.read_text())
    grown["study"]["pipeline_seeds"] = [1, 2, 3, 4]
    config.write_text(yaml.safe_dump(grown))
    assert cli.main(["study", "--plan", "--config", str(config), "--out", str(out), *SETTINGS]) == 0
    text = capsys.readouterr().out
    assert "  baseline/seed-4/finetune " in text and "no estimate" not in text
    timings = json.loads((out / "timings.json").read_text())
    estimate = sum(timings[f"baseline/seed-{s}/finetune"] for s in (1, 2, 3)) / 3
    assert "baseline/seed-4/finetune" in text and f"{estimate / 60:.1f} min" in text


@pytest.mark.parametrize(
    ("study", "message"),
    [
        ({"arms": [{"name": "baseline", "own_search": False}]}, "own_search=false"),
        ({"arms": [{"name": "baseline"}, {"name": "b", "seeds": 4}]}, "seeds must be between 1"),
        ({"arms": [{"name": "baseline", "seeds": 1}]}, "must run at every pipeline seed"),
        ({"arms": [{"name": "baseline"}], "primary_arm": "nope"}, "study.primary_arm"),
    ],
)
def test_bad_protocol_sections_end_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], study: dict[str, Any], message: str
) -> None:
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"study": {"pipeline_seeds": [1, 2], **study}}))
    assert (
        cli.main(["study", "--plan", "--config", str(config), "--out", str(tmp_path / "o"), *SETTINGS]) == 2
    )
    error = capsys.readouterr().err.strip()
    assert message in error and len(error.splitlines()) == 1
