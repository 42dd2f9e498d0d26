"""report: numbers equal the catalog's, figures and the card are written."""

from __future__ import annotations

import json
import re

import cv2
import pytest

from inf590k.build import catalog as cat
from inf590k.build.shard import ShardConfig
from inf590k.dataset.report import ReportConfig, report
from inf590k.execution.units import ExecutionOptions
from tests.builders import make_build, shard_dataset


@pytest.fixture(scope="module")
def built(tmp_path_factory, ir_samples):
    root = tmp_path_factory.mktemp("report")
    build = make_build(root, ir_samples)
    shard_dataset(ShardConfig(build=build, out=root / "ds", max_count=4, execution=ExecutionOptions(workers=1, progress=False)))
    return build, root / "ds"


def test_report_numbers_match_the_catalog(built):
    build, dataset = built
    summary = report(ReportConfig(dataset=dataset, grid_samples=6))
    numbers = json.loads((summary.out / "report.json").read_text())
    expected = cat.status_counts(cat.read_catalog(build))
    assert set(numbers["sources"]) == set(expected) == {"alpha", "beta"}
    for source, counts in expected.items():
        row = numbers["sources"][source]
        assert (row["found"], row["kept"], row["duplicate"], row["rejected"], row["excluded"]) == (
            counts["found"],
            counts["ok"],
            counts["duplicate"],
            counts["rejected"],
            counts["excluded"],
        )
        assert row["found"] == row["kept"] + row["duplicate"] + row["rejected"] + row["excluded"]
    assert numbers["sources"]["beta"]["reasons"] == {"duplicate": {"duplicate": 1}}
    assert numbers["samples"] == numbers["totals"]["kept"] == 9
    assert sum(b["samples"] for b in numbers["bins"]) == 9
    bins = json.loads((build / "bins.json").read_text())["counts"]
    assert {b["bin"]: b["samples"] for b in numbers["bins"]} == bins
    assert numbers["sample_grid_images"] == 6
    assert sum(sum(bar["images"].values()) for bar in numbers["resolution_bars"]) == 9
    assert (
        numbers["samples"]
        == json.loads((dataset / "data" / "_info.json").read_text())["splits"]["train"][
            "num_samples"
        ]
    )
    grid = cv2.imread(str(summary.out / "sample_grid.png"), cv2.IMREAD_GRAYSCALE)
    assert grid.shape[1] == 1200 and grid.std() > 10
    for figure in ("resolution_hist.png", "entropy_hist.png"):
        image = cv2.imread(str(summary.out / figure))
        assert image.shape == (450, 800, 3) and image.std() > 5
    assert summary.out == dataset / "metadata" / "report"
    card = (dataset / "README.md").read_text()
    assert card.startswith("---\nlicense: other") and "license_link: metadata/LICENSES.md" in card
    assert "| alpha |" in card and "| beta |" in card
    assert "9 single-channel infrared (thermal) images" in card
    assert "1 duplicate removed" in card and "1 duplicates" not in card
    assert "2 self-collected folders" in card and "public source" not in card
    assert "metadata/report/sample_grid.png" in card and 'input_img_mode="L"' in card
    assert 'decode("l")' in card and "OWNER/NAME" in card
    for row in numbers["bins"]:
        assert f"| {row['bin']} | {row['samples']} |" in card
    assert str(summary) == f"report: 9 samples from 2 sources in {len(bins)} bins -> {summary.out}"


def test_resolution_ticks_and_bin_edges():
    from inf590k.dataset.report import short_side_edges

    names = ["s0-255_r100-114", "s512-767_r115-149", "s768-up_r115-149"]
    assert short_side_edges(names) == [512, 768]


def test_report_needs_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="inf590k shard"):
        report(ReportConfig(dataset=tmp_path))


def test_resolution_bars_are_the_bins_short_side_classes():
    """Read back from the figure's own bars: each spans exactly its class, and an image whose
    short side is exactly an edge (256) is counted in the class that starts there."""
    import numpy as np

    from inf590k.build.bins import bin_names
    from inf590k.dataset.report import resolution_bars, resolution_figure

    widths = np.array([320, 256, 640, 300, 1280, 640, 255])
    heights = np.array([240, 256, 512, 256, 1024, 384, 300])
    sources = ["a", "a", "b", "b", "b", "a", "a"]
    bars = resolution_bars(np.minimum(widths, heights), bin_names(widths, heights), sources)
    by_name = {bar.name: bar for bar in bars}
    assert list(by_name) == ["s0-255", "s256-383", "s384-511", "s512-767", "s768-up"]
    assert by_name["s256-383"].images == {"a": 1, "b": 1}  # both images at exactly 256
    assert by_name["s0-255"].images == {"a": 2}  # 240 and 255
    assert (by_name["s256-383"].left, by_name["s256-383"].right) == (256, 384)
    assert by_name["s768-up"].high is None and by_name["s768-up"].right > 1024
    for bar in bars:
        assert bar.low <= bar.left and (bar.high is None or bar.right == bar.high + 1)

    figure = resolution_figure(bars)
    axis = figure.axes[0]
    drawn = {}  # (left, right) -> total height, over the stacked sources
    for patch in axis.patches:
        span = (round(patch.get_x(), 6), round(patch.get_x() + patch.get_width(), 6))
        drawn[span] = drawn.get(span, 0) + patch.get_height()
    assert drawn[(256, 384)] == 2 and drawn[(384, 512)] == 1 and drawn[(512, 768)] == 1
    for (left, right), _ in drawn.items():  # no bar straddles a class edge
        assert not any(left < edge < right for edge in (256, 384, 512, 768))
    labels = {text.get_text() for text in axis.texts}
    assert set(by_name) <= labels
    assert axis.get_xscale() == "log"


def test_resolution_bars_refuse_a_name_without_a_short_side_class():
    import numpy as np

    from inf590k.dataset.report import resolution_bars

    with pytest.raises(ValueError, match=re.escape("s<low>-<high|up>")):
        resolution_bars(np.array([100]), ["r100-114"], ["a"])
