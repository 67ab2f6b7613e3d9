"""The HTML report: self-contained, all sections present, numbers and strings shown safely."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bissl.errors import BisslError
from bissl.report import summary_sentence, write_report
from bissl.report.schema import compare_results

SECTION_IDS = [
    "summary",
    "results",
    "per-seed",
    "statistics",
    "probes",
    "tsne",
    "curves",
    "curvature",
    "search",
    "timings",
    "config",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_tsne_png(path: Path) -> None:
    """A tiny real PNG drawn with matplotlib, standing in for the t-SNE figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2, 1))
    FigureCanvasAgg(figure)
    figure.subplots().scatter([0, 1, 2], [2, 0, 1])
    figure.savefig(path, format="png", dpi=40)


def _arm(
    backbone: str, values: list[float], top5: list[float], lr: float, weight_decay: float
) -> dict[str, Any]:
    trials = [
        {
            "number": number,
            "lr": lr * (number + 1),
            "weight_decay": weight_decay,
            "value": 50.0 + number,
            "state": "COMPLETE",
        }
        for number in range(12)
    ]
    trials.append({"number": 12, "lr": 0.5, "weight_decay": 1e-5, "value": None, "state": "FAIL"})
    return {
        "backbone": backbone,
        "search": {"best": {"lr": lr, "weight_decay": weight_decay, "value": 61.0}, "trials": trials},
        "seeds": [
            {"seed": seed, "test_top1": top1, "test_top5": five}
            for seed, (top1, five) in enumerate(zip(values, top5))
        ],
        "summary": {
            "test_top1": {"mean": sum(values) / 3, "std": 0.5, "n": 3, "values": values},
            "test_top5": {"mean": sum(top5) / 3, "std": 0.25, "n": 3, "values": top5},
        },
    }


def _diagnostics(alternation: int) -> dict[str, Any]:
    """What ``bilevel.diagnose_every`` adds to a bilevel record."""
    return {
        "lambda_min": -25.0 + 4 * alternation,
        "lambda_max": 600.0 + alternation,
        "ritz_below": 4 - alternation,
        "positive_definite": alternation == 4,
        "true_residual": 2.5 / (alternation + 1),
        "cosine_first_order": 0.125 * (alternation + 1),
        "diagnose_products": 21,
    }


def make_results() -> dict[str, Any]:
    """Two arms, three seeds, short curves: what `bissl compare` writes, in miniature."""
    return {
        "title": "Demo <script>alert(1)</script> & co",
        "created": "2025-01-02T03:04:05",
        "primary_metric": "top1",
        "datasets": {"pretext": "fashion-mnist", "downstream": "digits"},
        "config": {
            "model": {"backbone": "resnet-tiny"},
            "bissl": {"lower_lambda": 0.001, "note": "<b>bold</b>"},
        },
        "arms": {
            "baseline": _arm("resnet-tiny", [70.0, 71.0, 72.0], [95.0, 96.0, 97.0], 0.0316, 0.0001),
            "bissl": _arm("resnet-tiny", [72.0, 73.5, 74.0], [96.5, 97.0, 98.0], 0.0123, 0.00025),
        },
        "comparison": {
            "test_top1": {
                "n": 3,
                "mean_difference": 2.1666,
                "ci95": [-0.4321, 4.7654],
                "t_pvalue": 0.0712,
                "wilcoxon_pvalue": 0.25,
            },
            "test_top5": {
                "n": 3,
                "mean_difference": 1.1667,
                "ci95": [0.1, 2.2],
                "t_pvalue": 0.04,
                "wilcoxon_pvalue": 0.25,
            },
        },
        "probes": {
            "baseline": {"knn_top1": 66.125, "probe_top1": 68.875},
            "bissl": {"knn_top1": 69.375, "probe_top1": 70.625},
        },
        "figures": {"tsne": "tsne.png"},
        "curves": {
            "pretrain": [{"step": step, "loss": 5.0 - 0.1 * step} for step in range(10)],
            "bilevel": [
                {
                    "alternation": alternation,
                    "lower_loss": 4.0 - 0.1 * alternation,
                    "regulariser": 0.001 * alternation,
                    "upper_loss_lower": 2.0 - 0.05 * alternation,
                    "upper_loss_upper": 2.1 - 0.05 * alternation,
                    "distance": 0.1 * alternation,
                    "solver_residual": 0.5 / (alternation + 1),
                    "lower_seconds": 0.25,
                    "upper_seconds": 0.75,
                    "val_top1": 60.0 + alternation,
                    "damping": 10.0 + alternation,
                    "products": 40,
                    **(_diagnostics(alternation) if alternation % 2 == 0 else {}),
                }
                for alternation in range(5)
            ],
            "finetune": {
                arm: [
                    {
                        "epoch": epoch,
                        "val_top1": 50.0 + 5 * epoch + offset,
                        "train_loss": 2.0 / (epoch + 1 + offset),
                    }
                    for epoch in range(4)
                ]
                for arm, offset in (("baseline", 0.0), ("bissl", 2.0))
            },
        },
        "timings": {"pretrain": 120.0, "bissl <lower&upper>": 3725.0, "finetune": None},
        "fairness": "same-checkpoint",
    }


def write_results(run_dir: Path, results: dict[str, Any]) -> Path:
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    return run_dir


def _section(document: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', document, flags=re.DOTALL)
    assert match is not None, f"section {section_id} missing"
    return match.group(1)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full report shared by the tests that only read it (drawing the figures takes seconds)."""
    run_dir = tmp_path_factory.mktemp("compare")
    write_tsne_png(run_dir / "tsne.png")
    path = write_report(write_results(run_dir, make_results()))
    assert path == run_dir / "report.html"
    assert path.is_file()
    return run_dir


@pytest.fixture()
def report(report_dir: Path) -> str:
    return (report_dir / "report.html").read_text(encoding="utf-8")


def test_report_is_self_contained(report: str) -> None:
    assert 'src="http' not in report
    assert 'href="http' not in report
    assert "<script" not in report.lower()
    assert "<link" not in report.lower()
    assert "url(" not in report
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', report)
    assert len(report.split("<img")) - 1 == len(sources) >= 5  # per-seed, bilevel, pretrain, finetune, t-SNE
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_SIGNATURE)


def test_sections_appear_in_order(report: str) -> None:
    positions = [report.find(f'<section id="{section_id}">') for section_id in SECTION_IDS]
    assert all(position >= 0 for position in positions)
    assert positions == sorted(positions)


def test_tsne_file_is_embedded_unchanged(report_dir: Path, report: str) -> None:
    encoded = base64.b64encode((report_dir / "tsne.png").read_bytes()).decode("ascii")
    assert f"data:image/png;base64,{encoded}" in _section(report, "tsne")


def test_results_table_shows_formatted_numbers(report: str) -> None:
    table = _section(report, "results")
    assert "71.00 ± 0.50" in table  # baseline top-1
    assert "73.17 ± 0.50" in table  # BiSSL top-1, mean 73.1666…
    assert "96.00 ± 0.25" in table and "97.17 ± 0.25" in table  # top-5
    assert "0.0316" in table and "0.0001" in table  # baseline chosen lr and weight decay
    assert "0.0123" in table and "0.00025" in table
    assert table.count('<td class="number">13</td>') == 2  # trials per arm
    assert table.find("Baseline") < table.find("BiSSL")


def test_statistics_probes_timings_and_search(report: str) -> None:
    statistics = _section(report, "statistics")
    assert "+2.17" in statistics and "[-0.43, +4.77]" in statistics
    assert "0.071" in statistics and "0.250" in statistics
    probes = _section(report, "probes")
    for number in ("66.12", "68.88", "69.38", "70.62"):
        assert number in probes
    timings = _section(report, "timings")
    assert "1:02:05" in timings and "3725.0" in timings and "n/a" in timings
    assert "3845.0" in timings  # total of the measured stages
    assert "lower phase 0.250 s" in timings
    search = _section(report, "search")
    rows = [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", search)]
    rows = [cells for cells in rows if cells]
    assert len(rows) == 20  # top 10 of 13 trials per arm
    values = [float(cells[3]) for cells in rows[:10]]
    assert values == sorted(values, reverse=True) and values[0] == 61.0 and values[-1] == 52.0
    assert all(cells[4] == "COMPLETE" for cells in rows)  # the failed trial (no value) ranks last
    assert "Best 10 of 13 trials" in search and "FAIL 1" in search


def test_strings_from_results_are_escaped(report: str) -> None:
    assert "<script>alert(1)</script>" not in report
    assert "Demo &lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in report
    assert "bissl &lt;lower&amp;upper&gt;" in _section(report, "timings")
    config = _section(report, "config")
    assert "<pre>" in config and "lower_lambda: 0.001" in config and "&lt;b&gt;bold&lt;/b&gt;" in config


def test_summary_names_winner_interval_and_caveat(report: str) -> None:
    summary = _section(report, "summary")
    assert "BiSSL beat the baseline on test top-1 by 2.17 points" in summary
    assert "[-0.43, +4.77]" in summary and "0.071" in summary and "0.250" in summary
    assert "only 3 seeds" in summary and "includes 0" in summary


def test_summary_wording_follows_the_numbers() -> None:
    results = make_results()
    comparison = results["comparison"]["test_top1"]
    comparison.update(mean_difference=-1.5, ci95=[-2.5, -0.5], n=10, t_pvalue=0.004, wilcoxon_pvalue=0.0002)
    sentence = summary_sentence(compare_results(results))
    assert sentence.startswith("The baseline beat BiSSL on test top-1 by 1.50 points")
    assert "p = 0.004" in sentence and "p = < 0.001" in sentence
    assert sentence.endswith("the interval excludes 0.") and "only" not in sentence
    comparison.update(ci95=[None, None], n=1)
    assert "no interval" in summary_sentence(compare_results(results))
    comparison.update(ci95=[-1.0, 2.0], n=10)
    assert "not significant at the 5% level" in summary_sentence(compare_results(results))


def test_one_arm_with_null_numbers_and_a_missing_figure(tmp_path: Path) -> None:
    results = make_results()
    del results["arms"]["baseline"]
    bissl = results["arms"]["bissl"]
    bissl["seeds"][1]["test_top5"] = None
    bissl["summary"]["test_top5"] = {"mean": None, "std": None, "n": 0, "values": []}
    bissl["search"]["best"] = {"lr": None, "weight_decay": None, "value": None}
    results["comparison"] = {}
    results["probes"] = {"bissl": {"knn_top1": None, "probe_top1": 70.5}}
    results["figures"] = {"tsne": "absent.png"}  # named but never written
    results["curves"]["pretrain"] = []
    results["curves"]["finetune"] = {"bissl": results["curves"]["finetune"]["bissl"]}
    document = write_report(write_results(tmp_path, results)).read_text(encoding="utf-8")
    for section_id in SECTION_IDS:
        assert f'<section id="{section_id}">' in document
    assert "Only the BiSSL arm ran" in _section(document, "summary")
    table = _section(document, "results")
    assert "Baseline" not in table and "73.17 ± 0.50" in table and "n/a" in table
    assert "n/a" in _section(document, "probes") and "70.50" in _section(document, "probes")
    assert "No paired comparison" in _section(document, "statistics")
    tsne = _section(document, "tsne")
    assert "absent.png" in tsne and "not found" in tsne and "<img" not in tsne
    assert _section(document, "per-seed").count("<img") == 1
    assert "No pretraining curve" in _section(document, "curves")


def test_missing_results_json_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(BisslError, match=r"results\.json not found.*bissl compare"):
        write_report(tmp_path)
    with pytest.raises(BisslError, match="not a folder"):
        write_report(tmp_path / "absent")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "the top level must be an object"),
        (json.dumps({**make_results(), "arms": []}), "arms must be an object"),
        (json.dumps({**make_results(), "arms": {}}), "arms is empty"),
        (
            json.dumps({key: value for key, value in make_results().items() if key != "timings"}),
            "'timings' is missing",
        ),
        (
            json.dumps({**make_results(), "probes": {"bissl": {"knn_top1": "high"}}}),
            "probes.bissl.knn_top1 must be a number",
        ),
        (
            json.dumps({**make_results(), "comparison": {"test_top1": {"ci95": [1.0]}}}),
            "ci95 must hold two numbers",
        ),
    ],
)
def test_malformed_results_json_is_a_one_line_user_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "results.json").write_text(content, encoding="utf-8")
    with pytest.raises(BisslError, match=message) as caught:
        write_report(tmp_path)
    assert "\n" not in str(caught.value) and "rerun 'bissl compare'" in str(caught.value)
    assert not (tmp_path / "report.html").exists()


def test_curvature_section_shows_the_diagnostics(report: str) -> None:
    curvature = _section(report, "curvature")
    assert curvature.count("<img") == 1
    assert "positive definite at 1 of 3 diagnosed alternations" in curvature
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", curvature)
    assert cells == ["4", "-9", "604", "0", "yes", "0.5", "0.625", "14"]  # the last diagnosed alternation
    assert '<a href="#curvature">Curvature</a>' in report


def test_curvature_section_says_so_without_diagnostics(tmp_path: Path) -> None:
    results = make_results()
    for point in results["curves"]["bilevel"]:
        for key in _diagnostics(0):
            point.pop(key, None)
    document = write_report(write_results(tmp_path, results)).read_text(encoding="utf-8")
    curvature = _section(document, "curvature")
    assert "No curvature diagnostics were recorded" in curvature and "<img" not in curvature
    assert _section(document, "curves").count("<img") == 3  # bilevel, pretraining, fine-tuning
