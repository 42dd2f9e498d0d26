"""Resolution bins: short-side class x aspect class of every kept image.

A bin name reads as `s<lo>-<hi>_r<lo>-<hi>`: the short side in pixels and the aspect ratio
(long side / short side, orientation ignored) x 100, both ranges inclusive; the last class of
each axis is open (`s768-up`, `r200-up`; no `+`, which URLs may read as a space). Example
with the defaults: a 640x512 frame is
`s512-767_r115-149`, a 1280x1024 frame `s768-up_r115-149`, a 640x640 one `s512-767_r100-114`.

Defaults: short-side edges 256, 384, 512, 768 (the common IR sensor heights 240/288, 480/512
and 1024 fall in different classes), aspect edges 1.15, 1.5, 2.0 (square, 5:4/4:3, 16:9, wider).
Bins decide the shard folders: one folder per bin, so a trainer can pick resolutions by folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from inf590k.build import catalog as cat
from inf590k.build import lineage
from inf590k.execution.progress import stage_progress
from inf590k.fsutil import plural, write_text_atomic

BINS_FILENAME = "bins.json"
DEFAULT_SHORT_EDGES = (256, 384, 512, 768)
DEFAULT_ASPECT_EDGES = (1.15, 1.5, 2.0)


@dataclass(frozen=True)
class BinConfig:
    """One field per `inf590k bin` option."""

    build: Path
    short_edges: tuple[int, ...] = DEFAULT_SHORT_EDGES  # short-side class boundaries, pixels
    aspect_edges: tuple[float, ...] = DEFAULT_ASPECT_EDGES  # long/short ratio boundaries
    progress: bool = True  # a bar of its steps on stderr


@dataclass
class BinSummary:
    counts: dict[str, int]  # bin -> kept images
    unbinned: int  # rows that are not ok (rejected, excluded, duplicate): res_bin ""

    def __str__(self) -> str:
        top = ", ".join(
            f"{name} {count}"
            for name, count in sorted(self.counts.items(), key=lambda x: -x[1])[:4]
        )
        more = f", {len(self.counts) - 4} more" if len(self.counts) > 4 else ""
        return (
            f"bin: {plural(sum(self.counts.values()), 'image')} in "
            f"{plural(len(self.counts), 'bin')} ({top}{more})"
        )


def _check_edges(short_edges: tuple[int, ...], aspect_edges: tuple[float, ...]) -> None:
    if list(short_edges) != sorted(set(short_edges)) or any(e <= 0 for e in short_edges):
        raise ValueError(
            f"--short-edges must be increasing positive pixel counts, got {short_edges}"
        )
    if list(aspect_edges) != sorted(set(aspect_edges)) or any(e <= 1.0 for e in aspect_edges):
        raise ValueError(f"--aspect-edges must be increasing ratios above 1.0, got {aspect_edges}")


def _class_labels(edges: list[int], prefix: str) -> list[str]:
    bounds = [0, *edges]
    labels = [f"{prefix}{lo}-{hi - 1}" for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    return [*labels, f"{prefix}{bounds[-1]}-up"]


def bin_classes(
    widths: np.ndarray,
    heights: np.ndarray,
    short_edges: tuple[int, ...] = DEFAULT_SHORT_EDGES,
    aspect_edges: tuple[float, ...] = DEFAULT_ASPECT_EDGES,
) -> tuple[np.ndarray, list[str]]:
    """Bin of every image ([N] widths and heights) as an index ([N] int32) into the list of
    every bin name the edges make: one name per bin, not a string per image."""
    _check_edges(short_edges, aspect_edges)
    widths, heights = np.asarray(widths, dtype=np.int64), np.asarray(heights, dtype=np.int64)
    short = np.minimum(widths, heights)
    ratio_x100 = np.floor(np.maximum(widths, heights) * 100 / np.maximum(short, 1) + 1e-9)
    aspect_x100 = [round(e * 100) for e in aspect_edges]
    short_class = np.searchsorted(np.array(short_edges), short, side="right")
    aspect_class = np.searchsorted(np.array(aspect_x100), ratio_x100, side="right")
    short_labels = _class_labels(list(short_edges), "s")
    aspect_labels = _class_labels([100, *aspect_x100], "r")[1:]  # ratios start at 1.00
    names = [f"{s}_{a}" for s in short_labels for a in aspect_labels]
    return (short_class * len(aspect_labels) + aspect_class).astype(np.int32), names


def bin_names(
    widths: np.ndarray,
    heights: np.ndarray,
    short_edges: tuple[int, ...] = DEFAULT_SHORT_EDGES,
    aspect_edges: tuple[float, ...] = DEFAULT_ASPECT_EDGES,
) -> list[str]:
    """Bin name per image ([N] widths and heights)."""
    classes, names = bin_classes(widths, heights, short_edges, aspect_edges)
    return [names[c] for c in classes.tolist()]


def _bin_column(classes: np.ndarray, names: list[str]) -> pa.DictionaryArray:
    """The res_bin column: bin names dictionary-encoded, the dictionary in order of first
    appearance (as `dictionary_encode` of the names would give it)."""
    present, first = np.unique(classes, return_index=True)
    by_appearance = present[np.argsort(first)]  # [B] classes, first seen first
    position = np.zeros(len(names), dtype=np.int32)
    position[by_appearance] = np.arange(len(by_appearance), dtype=np.int32)
    dictionary = pa.array([names[c] for c in by_appearance.tolist()], type=pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(position[classes]), dictionary)


BIN_STEPS = ("read", "binned", "written")  # what its progress bar names


@lineage.stage("bin", ignore=("build", "progress"))
def bin_catalog(config: BinConfig) -> BinSummary:
    """Name the bin of every ok row in BUILD/bins/assign.parquet (uid, res_bin; the catalog
    reader gives the other rows ""); write BUILD/bins.json with the counts."""
    with stage_progress("bin", config.progress, BIN_STEPS) as bar:
        table = cat.read_catalog(config.build, columns=["status", "width", "height"])
        ok = pa.compute.fill_null(pa.compute.equal(table.column("status"), cat.STATUS_OK), False)
        uids = table.column("uid").filter(ok)
        widths = table.column("width").filter(ok).to_numpy(zero_copy_only=False)
        heights = table.column("height").filter(ok).to_numpy(zero_copy_only=False)
        unbinned = len(table) - len(uids)
        del table
        bar.advance("read")
        classes, names = bin_classes(widths, heights, config.short_edges, config.aspect_edges)
        bar.advance("binned")
        assign = pa.table({"uid": uids, "res_bin": _bin_column(classes, names)})
        lineage.mark_running(config.build, "bin")
        cat.write_columns(config.build, cat.BIN_ASSIGN_PATH, assign)
        bar.advance("written")
    per_class = np.bincount(classes, minlength=len(names))
    counts = dict(sorted((names[c], int(n)) for c, n in enumerate(per_class.tolist()) if n))
    summary = BinSummary(counts=counts, unbinned=unbinned)
    record = {
        "short_edges": list(config.short_edges),
        "aspect_edges": list(config.aspect_edges),
        "counts": counts,
        "unbinned": summary.unbinned,
    }
    write_text_atomic(Path(config.build) / BINS_FILENAME, json.dumps(record, indent=1))
    return summary
