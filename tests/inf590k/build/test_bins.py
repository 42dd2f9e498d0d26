"""Resolution bins: names, edges, the catalog column and counts."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from inf590k.build import catalog as cat
from inf590k.build import lineage
from inf590k.build.bins import BinConfig, bin_catalog, bin_names


def test_default_bins_of_common_sensor_sizes():
    sizes = [
        (640, 512),
        (512, 640),
        (1280, 1024),
        (640, 640),
        (320, 256),
        (1918, 1080),
        (100, 20),
        (255, 255),
        (256, 256),
    ]
    names = bin_names(np.array([w for w, _ in sizes]), np.array([h for _, h in sizes]))
    assert names == [
        "s512-767_r115-149",
        "s512-767_r115-149",  # portrait: orientation ignored
        "s768-up_r115-149",
        "s512-767_r100-114",
        "s256-383_r115-149",
        "s768-up_r150-199",
        "s0-255_r200-up",
        "s0-255_r100-114",
        "s256-383_r100-114",
    ]


def test_configurable_edges_and_bad_edges():
    assert bin_names(np.array([640]), np.array([512]), (600,), (1.3,)) == ["s0-599_r100-129"]
    assert bin_names(np.array([700]), np.array([700]), (600,), (1.3,)) == ["s600-up_r100-129"]
    with pytest.raises(ValueError, match="--short-edges"):
        bin_names(np.array([1]), np.array([1]), (512, 256), (1.5,))
    with pytest.raises(ValueError, match="--aspect-edges"):
        bin_names(np.array([1]), np.array([1]), (256,), (0.5,))


def test_bin_stage_fills_the_column_for_kept_rows_only(tmp_path):
    rows = []
    for index, (w, h, status) in enumerate(
        [
            (640, 512, "ok"),
            (640, 480, "ok"),
            (64, 64, "ok"),
            (640, 512, "duplicate"),
            (10, 10, "rejected"),
        ]
    ):
        row = cat.empty_row()
        row.update(
            uid=f"u{index}", source="s", relpath=f"{index}.png", status=status, width=w, height=h
        )
        rows.append(row)
    cat.write_parquet_atomic(
        cat.rows_to_table(rows), cat.catalog_dir(tmp_path) / "part-s-0000.parquet"
    )
    for stage in ("ingest", "dedupe"):  # a hand-made catalog: record the stages bin reads
        lineage.finish(tmp_path, stage, {}, None)
    summary = bin_catalog(BinConfig(build=tmp_path))
    table = cat.read_catalog(tmp_path)
    assert table.column("res_bin").to_pylist() == [
        "s512-767_r115-149",
        "s384-511_r115-149",
        "s0-255_r100-114",
        "",
        "",
    ]
    assert summary.counts == {"s0-255_r100-114": 1, "s384-511_r115-149": 1, "s512-767_r115-149": 1}
    assert summary.unbinned == 2 and table.num_rows == 5
    assert json.loads((tmp_path / "bins.json").read_text())["counts"] == summary.counts
    assert str(summary).startswith("bin: 3 images in 3 bins")


def test_summary_names_the_bins_it_leaves_out():
    from inf590k.build.bins import BinSummary

    summary = BinSummary(counts={f"b{i}": 10 - i for i in range(6)}, unbinned=0)
    assert str(summary).endswith("(b0 10, b1 9, b2 8, b3 7, 2 more)")


def test_summary_lines_say_1_bin_not_1_bins():
    from inf590k.build.bins import BinSummary

    assert str(BinSummary(counts={"640x512": 1}, unbinned=0)).startswith("bin: 1 image in 1 bin (")


def test_res_bin_column_is_the_dictionary_encoding_of_the_names():
    from inf590k.build.bins import _bin_column, bin_classes

    rng = np.random.default_rng(3)
    widths, heights = rng.integers(1, 2000, 500), rng.integers(1, 2000, 500)
    classes, names = bin_classes(widths, heights)
    encoded = pa.array(bin_names(widths, heights), type=pa.string()).dictionary_encode()
    assert _bin_column(classes, names).equals(encoded)  # same dictionary order, same indices
    assert _bin_column(classes[:0], names).equals(pa.array([], type=pa.string()).dictionary_encode())
