"""A renamed config key: the old name is still read (with a one-line note), both names at once are refused,
and stored configs that use the old name compare equal to current ones."""

from __future__ import annotations

import pytest

from bissl.config import load_config, to_dict, with_current_names
from bissl.errors import ConfigError


def test_the_old_name_still_works_with_a_note(capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(None, ["bilevel.cg_iterations=7"])
    assert config.bilevel.solver_iterations == 7
    note = capsys.readouterr().err.strip()
    assert note == (
        "bissl: note: config key 'bilevel.cg_iterations' is now 'bilevel.solver_iterations'; the old name still works"
    )
    load_config(None, ["bilevel.solver_iterations=7"])
    assert capsys.readouterr().err == ""


def test_both_names_at_once_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"give only 'bilevel\.solver_iterations'"):
        load_config(None, ["bilevel.cg_iterations=3", "bilevel.solver_iterations=4"])


def test_a_stored_config_with_the_old_name_reads_as_the_current_one() -> None:
    current = to_dict(load_config(None, ["bilevel.solver_iterations=3"]))
    stored = to_dict(load_config(None, ["bilevel.solver_iterations=3"]))
    stored["bilevel"]["cg_iterations"] = stored["bilevel"].pop("solver_iterations")
    assert stored != current
    assert with_current_names(stored) == current
