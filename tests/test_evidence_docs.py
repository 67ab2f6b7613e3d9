"""The prose of an evidence page quotes only numbers its generated part shows: the interpretive sections kept
by ``bissl study-doc`` below its marker cannot drift from the table when the study is rerun or extended."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bissl.report.evidence import KEEP_MARKER

DOCS = Path(__file__).resolve().parents[1] / "docs"
INTERPRETIVE = ("## Reading the result", "## What it means")
NUMBER = re.compile(r"[+−-]?\d+\.\d+")


def _sections(text: str, titles: tuple[str, ...]) -> str:
    """The text of the ``## `` sections whose titles are given."""
    parts = re.split(r"(?m)^(?=## )", text)
    return "".join(part for part in parts if part.startswith(titles))


def _signed(number: str) -> str:
    """A quoted number with its sign written one way: "−0.36" and "-0.36" alike, "+0.78" as "0.78"."""
    return number.replace("−", "-").lstrip("+")


def quoted_numbers_missing(document: str) -> list[str]:
    """Decimal numbers of the interpretive sections below the marker that the generated part lacks. A number
    quoted with a sign must appear with that sign; one quoted bare ("lowers k-NN by 0.36") may appear with
    either."""
    generated, kept = document.split(KEEP_MARKER, 1)
    shown = {_signed(match) for match in NUMBER.findall(generated)}
    magnitudes = {number.lstrip("-") for number in shown}
    quoted = NUMBER.findall(_sections(kept, INTERPRETIVE))
    return [q for q in quoted if (_signed(q) not in shown if q[0] in "+-−" else q not in magnitudes)]


@pytest.mark.parametrize("page", sorted(DOCS.glob("evidence*.md")), ids=lambda p: p.name)
def test_evidence_prose_quotes_the_table(page: Path) -> None:
    document = page.read_text(encoding="utf-8")
    if KEEP_MARKER not in document or not _sections(document.split(KEEP_MARKER, 1)[1], INTERPRETIVE):
        pytest.skip(f"{page.name} has no interpretive prose below its marker yet")
    assert quoted_numbers_missing(document) == []


def test_a_stale_number_is_caught() -> None:
    document = (
        f"| bissl | +0.78 | 0.176 |\n{KEEP_MARKER}\n## Reading the result\n\nHolm p = 0.118, gain +0.78.\n"
    )
    assert quoted_numbers_missing(document) == ["0.118"]
    flipped = f"| extra | -0.36 |\n{KEEP_MARKER}\n## What it means\n\nIt moved by +0.36, that is by 0.36.\n"
    assert quoted_numbers_missing(flipped) == ["+0.36"]
