"""The demo's detection row: synthetic M3FD, pretrained vs scratch, in the demo's results."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main


@pytest.mark.slow
def test_demo_prints_a_detection_row(tmp_path) -> None:
    out = tmp_path / "demo"
    args = [
        "demo",
        "--out",
        str(out),
        "--frames",
        "8",
        "--steps",
        "2",
        "--probe-steps",
        "2",
        "--detect-steps",
        "2",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "probe m3fd dugi_mae_tiny: 2 steps" in result.output
    assert "encoder            mAP      AP50" in result.output
    stored = json.loads((out / "probe-detect" / "comparison.json").read_text())
    assert set(stored) == {"table", "pretrained", "scratch"}
    assert (out / "probe-detect" / "split.json").is_file()
    assert "detection probe on synthetic M3FD" in result.output.split("demo results:")[1]
    # the probe's frames are not part of the pretraining corpus
    assert not (out / "sources" / "m3fd").exists()
