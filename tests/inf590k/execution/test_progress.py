"""The per-sample progress bar."""

from __future__ import annotations

import pytest

from inf590k.execution import progress


def test_a_bar_with_nothing_to_do_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    with progress.SampleProgress(0, "shard", True, None):
        pass
    assert capsys.readouterr().err == ""


def test_a_bar_moves_per_sample_in_the_parent(capsys: pytest.CaptureFixture[str]) -> None:
    with progress.SampleProgress(3, "shard", True, None) as bar:
        progress.tick()
        progress.tick(2)
        assert bar.bar.n == 3
    assert "3/3" in capsys.readouterr().err
