"""The schema of results.json: the file is written as the commands built it and read back checked and filled
in; files written before a block or key existed still load and render; a missing or mistyped key ends in one
line naming the file and the key."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bissl.config import Config
from bissl.errors import BisslError
from bissl.report import write_report
from bissl.report.evidence import evidence_markdown
from bissl.report.schema import (
    RESULTS_FILE,
    compare_results,
    load_compare_results,
    load_study_results,
    write_compare_results,
    write_study_results,
)
from bissl.report.study import format_table, render_study_report, table_rows
from bissl.runtime import RunDir
from tests.report.test_report import make_results, write_results


def _paired(difference: float, low: float | None, high: float | None, n: int) -> dict[str, Any]:
    """What ``compare_to_reference`` writes for one arm."""
    return {
        "mean_difference": difference,
        "std_difference": 0.5,
        "ci_low": low,
        "ci_high": high,
        "t_pvalue": 0.03,
        "t_pvalue_greater": 0.015,
        "wilcoxon_pvalue": 0.25,
        "n": n,
        "confidence": 0.95,
        "seeds": [1, 2, 3][:n],
        "t_pvalue_holm": 0.03,
        "wilcoxon_pvalue_holm": 0.25,
    }


def _seed(top1: float, knn: float) -> dict[str, Any]:
    return {
        "test_top1": top1,
        "finetune_values": [top1 - 0.5, top1 + 0.5],
        "finetune_seeds": [1, 2],
        "lr": 0.01,
        "weight_decay": 1e-4,
        "knn_top1": knn,
        "probe_top1": knn + 1,
        "seconds": {"finetune": 30.0, "alignment": 5.0},
        "total_seconds": 35.0,
    }


def make_study_results() -> dict[str, Any]:
    """What `bissl study` writes for a reference and one BiSSL arm at three pipeline seeds, with the
    BatchNorm control, in miniature."""
    spec = {"init": "pretrained", "extra_pretext": False, "overrides": [], "seeds": None, "own_search": True}
    summary = {"test_top1": {"mean": 70.0, "std": 1.0, "n": 3, "values": [69.0, 70.0, 71.0]}}
    return {
        "title": "BiSSL evidence study: synthetic -> synthetic",
        "created": "2025-01-02T03:04:05+00:00",
        "primary_metric": "test_top1",
        "reference": "baseline",
        "pipeline_seeds": [1, 2, 3],
        "finetune_seeds": 2,
        "pretext_checkpoint": "pretrain/checkpoints/pretext.pt",
        "arms": {
            "baseline": {
                "spec": {"name": "baseline", "bilevel": False, **spec},
                "seeds": {str(s): _seed(69.0 + s, 50.0 + s) for s in (1, 2, 3)},
                "summary": summary,
                "seconds_per_seed": 35.0,
                "complete": True,
            },
            "bissl": {
                "spec": {"name": "bissl", "bilevel": True, **spec},
                "seeds": {str(s): _seed(71.0 + s, 53.0 + s) for s in (1, 2, 3)},
                "summary": {"test_top1": {"mean": 73.0, "std": 1.0, "n": 3, "values": [72.0, 73.0, 74.0]}},
                "seconds_per_seed": 70.0,
                "complete": True,
            },
        },
        "controls": {
            "bn-recalibrated": {
                "of": "baseline",
                "seeds": {
                    str(s): {"knn_top1": 51.0 + s, "probe_top1": 52.0, "seconds": {}} for s in (1, 2, 3)
                },
                "summary": {"knn_top1": {"mean": 53.0, "std": 1.0, "n": 3, "values": [52.0, 53.0, 54.0]}},
            }
        },
        "comparison": {
            "test_top1": {"bissl": _paired(2.0, 1.0, 3.0, 3)},
            "knn_top1": {"bissl": _paired(3.0, 2.0, 4.0, 3), "bn-recalibrated": _paired(1.0, 0.5, 1.5, 3)},
            "probe_top1": {"bissl": _paired(3.0, 2.0, 4.0, 3)},
        },
        "primary": {},
        "shared_hyperparameters": False,
        "versus_matched": {},
        "timings": {"pretrain": 100.0, "parts": {"pretrain": 100.0}, "total_seconds": 415.0},
        "finished_runs": 6,
        "expected_runs": 6,
        "complete": True,
        "config": {"data": {"pretext": "synthetic", "downstream": "synthetic"}, "model": {"width": 4}},
    }


def _folder(tmp_path: Path, results: Any) -> Path:
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results), encoding="utf-8")
    return tmp_path


def test_writing_stores_the_results_as_built_and_returns_what_a_reader_sees(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "compare", Config())
    built = make_results()
    built["arms"]["bissl"]["search"]["sampler"] = "random"  # a search entry the schema does not name
    read = write_compare_results(run, copy.deepcopy(built))
    text = (run.path / RESULTS_FILE).read_text()
    assert text == json.dumps(built, indent=2)  # the bytes the commands have always written
    assert read == load_compare_results(run.path)
    assert read["arms"]["bissl"]["search"]["sampler"] == "random"
    assert read["comparison"]["test_top1"]["ci_low"] is None  # a number the file lacks reads as null

    study = RunDir(tmp_path / "study", Config())
    read_study = write_study_results(study, make_study_results())
    assert (study.path / RESULTS_FILE).read_text() == json.dumps(make_study_results(), indent=2)
    assert read_study == load_study_results(study.path)
    assert read_study["primary"] == {"arm": None, "statistic": None, "alpha": None, "tests": {}}
    assert read_study["versus_matched"] == {"reference": None, "test_top1": {}}


def test_an_older_compare_file_loads_and_renders(tmp_path: Path) -> None:
    """Blocks that are null or missing in a file (figures, an arm's search and summary, curves) read as
    empty; the report shows n/a where they would be."""
    old = make_results()
    del old["figures"]
    arm = old["arms"]["baseline"]
    arm["search"], arm["summary"] = None, None
    del arm["backbone"]
    old["curves"] = {"bilevel": None}
    old["comparison"]["test_top1"].pop("ci95")
    results = load_compare_results(_folder(tmp_path, old))
    assert results["figures"] == {} and results["arms"]["baseline"]["search"] == {"best": {}, "trials": []}
    assert results["arms"]["baseline"]["summary"] == {} and results["arms"]["baseline"]["backbone"] is None
    assert results["curves"] == {"bilevel": [], "pretrain": [], "finetune": {}}
    assert results["comparison"]["test_top1"]["ci95"] == []
    document = write_report(tmp_path).read_text(encoding="utf-8")
    assert "No t-SNE figure" in document and "No pretraining curve" in document


def test_an_older_study_file_loads_and_renders(tmp_path: Path) -> None:
    """A study written before the primary hypotheses, shared hyper-parameters and per-arm seeds existed."""
    old = make_study_results()
    for key in ("primary", "shared_hyperparameters"):
        del old[key]
    for arm in old["arms"].values():
        del arm["spec"]["seeds"], arm["spec"]["own_search"]
    results = load_study_results(_folder(tmp_path, old))
    assert results["shared_hyperparameters"] is None and results["primary"]["tests"] == {}
    assert results["arms"]["bissl"]["spec"]["own_search"] is None
    rows = table_rows(results)
    assert [row[0] for row in rows] == ["baseline", "bissl", "bn-recalibrated (baseline, alignment only)"]
    assert rows[1][2] == "+2.00" and rows[1][3] == "+1.00 … +3.00" and rows[1][11] == "2.0×"
    text = format_table(results)
    assert text.startswith("Complete: 6 of 6") and "bissl − baseline: +2.00 points" in text
    assert "k-NN above the BatchNorm control" in text
    assert 'id="forest"' in render_study_report(results)
    page = evidence_markdown(results, "images/x.png", "runs/study")
    assert "## Conclusion" in page and "## Primary answers" not in page and "| bissl | 73.00 ± 1.00" in page


def test_the_primary_arm_row_carries_its_one_sided_test(tmp_path: Path) -> None:
    results = make_study_results()
    h1 = _paired(2.0, 1.0, 3.0, 3) | {"arm": "bissl", "against": "baseline", "t_pvalue_greater_holm": 0.0312}
    results["primary"] = {"arm": "bissl", "statistic": "test_top1", "alpha": 0.05, "tests": {"H1": h1}}
    loaded = load_study_results(_folder(tmp_path, results))
    bissl = next(row for row in table_rows(loaded) if row[0] == "bissl")
    assert bissl[4] == "0.031" and bissl[5] == "n/a"  # H1's Holm-adjusted one-sided p, no Wilcoxon
    page = evidence_markdown(loaded, "images/x.png", "runs/study")
    assert "## Primary answers" in page and "## Secondary questions" in page
    assert "H1: bissl > baseline" in page and "supported at α = 0.05" in page


def _error(read: Any, folder: Path) -> str:
    with pytest.raises(BisslError) as caught:
        read(folder)
    message = str(caught.value)
    assert "\n" not in message and str(folder / RESULTS_FILE) in message
    return message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("reference"), "key 'reference' is missing"),
        (lambda r: r.update(arms=[]), "arms must be an object, got a list"),
        (
            lambda r: r["arms"]["bissl"]["seeds"]["2"].update(knn_top1="high"),
            "arms.bissl.seeds.2.knn_top1 must be a number or null, got text",
        ),
        (
            lambda r: r["arms"]["bissl"]["seeds"]["1"].update(finetune_seeds=[1, 2.5]),
            r"arms.bissl.seeds.1.finetune_seeds\[1\] must be a whole number, got a number",
        ),
        (lambda r: r["comparison"].update(test_top1=[]), "comparison.test_top1 must be an object"),
        (lambda r: r["timings"].update(parts={"pretrain": None}), "timings.parts.pretrain must be a number"),
        (lambda r: r["primary"].update(tests={"H1": {"n": "three"}}), "primary.tests.H1.n must be"),
        (lambda r: r.update(complete="yes"), "complete must be a boolean or null, got text"),
    ],
)
def test_a_malformed_study_file_is_one_line_naming_the_file_and_key(
    tmp_path: Path, change: Any, message: str
) -> None:
    results = make_study_results()
    change(results)
    error = _error(load_study_results, _folder(tmp_path, results))
    assert "is malformed" in error and "rerun 'bissl study'" in error
    assert re.search(message, error), error


def test_the_wrong_command_or_no_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "compare").mkdir()
    compare_folder = write_results(tmp_path / "compare", make_results())
    assert "written by 'bissl compare'" in _error(load_study_results, compare_folder)
    study_folder = tmp_path / "study"
    study_folder.mkdir()
    _folder(study_folder, make_study_results())
    assert "written by 'bissl study'" in _error(load_compare_results, study_folder)
    (study_folder / RESULTS_FILE).write_text("{not json")
    assert "not valid JSON" in _error(load_study_results, study_folder)
    with pytest.raises(BisslError, match=r"no results\.json in"):
        load_study_results(tmp_path / "empty")


def test_a_nested_compare_key_is_named(tmp_path: Path) -> None:
    results = make_results()
    results["curves"]["finetune"]["bissl"][2]["val_top1"] = [1, 2]
    error = _error(load_compare_results, _folder(tmp_path, results))
    assert "curves.finetune.bissl[2].val_top1 must be a number, text, a boolean or null, got a list" in error
    with pytest.raises(BisslError, match="arms is empty"):
        compare_results({**make_results(), "arms": {}}, "results.json")
