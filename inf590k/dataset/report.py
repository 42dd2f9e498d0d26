"""Report: counts, histograms, bins table and a captioned sample grid of a dataset folder.

Reads only the dataset folder (so it works on a downloaded copy too): the sidecar rows of the
shards data/_info.json lists (the kept rows), metadata/counts.json (per-source catalog counts)
and metadata/sources.json. Writes into DATASET/metadata/report/ and then rewrites the card
(README.md) with the statistics and figures:

    report.json          every number below, and the digest of the _info.json it describes
    resolution_hist.png  kept images per source, one bar per short-side class of the bins
    entropy_hist.png     8-bit-view entropy of kept images, per source
    sample_grid.png      a seeded sample of images, each captioned with source, bin and size
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from inf590k.dataset.card import card_text, info_sha256, write_card
from inf590k.dataset.layout import (
    COUNTS_PATH,
    REPORT_DIR,
    dataset_file,
    info_shards,
    read_info,
    read_owned,
    read_sidecars,
    read_sources_table,
    tar_path,
)
from inf590k.fsutil import write_bytes_atomic, write_text_atomic
from inf590k.inputs.headers import RejectedImage, check_before_decode

GRID_COLUMNS = 6
CELL = (192, 154)  # grid cell, width x height (5:4, the common IR sensor shape)


@dataclass(frozen=True)
class ReportConfig:
    """One field per `inf590k report` option."""

    dataset: Path
    out: Path | None = None  # default: DATASET/metadata/report (and the card is rewritten)
    grid_samples: int = 24
    seed: int = 0


@dataclass
class ReportSummary:
    out: Path
    samples: int
    sources: int
    bins: int

    def __str__(self) -> str:
        return (
            f"report: {self.samples} samples from {self.sources} sources in {self.bins} bins "
            f"-> {self.out}"
        )


def _load_counts(dataset: Path) -> dict[str, dict]:
    path = dataset_file(dataset, COUNTS_PATH)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: re-run `inf590k shard` for this dataset (it writes the counts)"
        )
    return json.loads(path.read_text())


def gather_numbers(dataset: Path) -> dict:
    """Every number of the report, from the dataset folder alone."""
    dataset = Path(dataset)
    info = read_info(dataset)
    kept = read_sidecars(dataset).to_pydict()
    counts = _load_counts(dataset)
    table = {e["id"]: e for e in read_sources_table(dataset)}
    sources = sorted(set(kept["source"]) | set(counts))
    per_source = {}
    for source in sources:
        recorded = counts.get(source, {})
        in_shards = sum(1 for s in kept["source"] if s == source)
        per_source[source] = {
            "found": recorded.get("found", in_shards),
            "kept": in_shards,
            "excluded": recorded.get("excluded", 0),
            "rejected": recorded.get("rejected", 0),
            "duplicate": recorded.get("duplicate", 0),
            "reasons": recorded.get("reasons", {}),
            "catalog_ok": recorded.get("ok", in_shards),
            "kind": table.get(source, {}).get("kind", "public"),
            "class_id": table.get(source, {}).get("class_id"),
            "license": table.get(source, {}).get("license"),
            "modality": table.get(source, {}).get("modality"),
        }
    bins = Counter(kept["res_bin"])
    bin_rows = []
    for bin_name in sorted(bins):
        in_bin = [i for i, b in enumerate(kept["res_bin"]) if b == bin_name]
        bin_rows.append(
            {
                "bin": bin_name,
                "samples": bins[bin_name],
                "sources": dict(Counter(kept["source"][i] for i in in_bin)),
                "median_size": [
                    int(np.median([kept["width"][i] for i in in_bin])),
                    int(np.median([kept["height"][i] for i in in_bin])),
                ],
            }
        )
    short = np.minimum(np.array(kept["width"]), np.array(kept["height"]))
    entropy = np.array([e if e is not None else np.nan for e in kept["entropy"]], dtype=float)
    resolutions = Counter(f"{w}x{h}" for w, h in zip(kept["width"], kept["height"], strict=True))
    splits = info.get("splits", {})
    return {
        "name": info.get("name", dataset.name),
        "info_sha256": info_sha256(dataset),
        "samples": len(kept["uid"]),
        "shards": len(info_shards(info)),
        "splits": {k: v.get("num_samples") for k, v in splits.items()},
        "sources": per_source,
        "totals": {
            k: sum(v[k] for v in per_source.values())
            for k in ("found", "kept", "excluded", "rejected", "duplicate")
        },
        "bins": bin_rows,
        "resolutions_top": dict(resolutions.most_common(15)),
        "short_side": _describe(short),
        "entropy_bits": _describe(entropy[~np.isnan(entropy)]),
        "bit_depth": dict(Counter(str(b) for b in kept["bit_depth"])),
        "modality": dict(Counter(str(m) for m in kept["modality"])),
    }


def _describe(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {}
    q = np.percentile(values, [0, 5, 50, 95, 100])
    return {
        "min": float(q[0]),
        "p5": float(q[1]),
        "median": float(q[2]),
        "p95": float(q[3]),
        "max": float(q[4]),
    }


# ----------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib  # matplotlib (and its backend) only when a report is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is chosen

    return plt


def short_side_edges(bin_names: list[str]) -> list[int]:
    """The short-side class edges the bins use: `s512-767_r...` -> 512 (0 left out)."""
    edges = {int(m.group(1)) for name in bin_names if (m := re.match(r"^s(\d+)-", name))}
    return sorted(e for e in edges if e > 0)


def save_figure(figure, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically (never through a link at `path`)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_bytes_atomic(path, buffer.getvalue())


# Members the grid reads from a shard, bounded (a shard may be someone else's): a sample's JSON
# is under 4 KiB, a PNG of the default pixel cap under ~200 MiB.
MAX_JSON_BYTES = 1 << 20
MAX_PNG_BYTES = 256 << 20


def _histogram(
    path: Path,
    values_by_source: dict[str, np.ndarray],
    xlabel: str,
    title: str,
) -> None:
    """A stacked histogram per source over 30 equal bins (the entropy figure)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    values = [v for v in values_by_source.values() if len(v)]
    everything = np.concatenate(values) if values else np.array([])
    if len(everything):
        low, high = float(everything.min()), float(everything.max())
        edges = np.linspace(low, high + 1e-6, 30)
        names = sorted(values_by_source)
        axis.hist([values_by_source[n] for n in names], bins=edges, stacked=True, label=names)
        axis.legend(fontsize=7, ncol=2)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("images")
    axis.set_title(title)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


# ----------------------------------------------------------------------------- resolution bars

SHORT_CLASS = re.compile(r"^s(\d+)-(\d+|up)(?:_|$)")


@dataclass(frozen=True)
class ResolutionBar:
    """One bar of the resolution figure: a short-side class of the bins, e.g. `s256-383`."""

    name: str  # the short-side part of the bin names it gathers
    low: int  # smallest short side in the class, px (inclusive)
    high: int | None  # largest, px (inclusive); None for the open last class (`s768-up`)
    images: dict[str, int]  # source -> kept images whose bin is in this class
    left: float  # where the bar is drawn, px: [left, right) holds exactly the class's sizes
    right: float

    def holds(self, short_side: int) -> bool:
        return self.low <= short_side and (self.high is None or short_side <= self.high)


def short_side_class(bin_name: str) -> tuple[str, int, int | None]:
    """`s256-383_r115-149` -> ("s256-383", 256, 383); `s768-up_...` -> ("s768-up", 768, None)."""
    match = SHORT_CLASS.match(bin_name)
    if not match:
        raise ValueError(f"bin name {bin_name!r} does not start with s<low>-<high|up>")
    high = None if match.group(2) == "up" else int(match.group(2))
    return f"s{match.group(1)}-{match.group(2)}", int(match.group(1)), high


def resolution_bars(
    short_sides: np.ndarray, bins: list[str], sources: list[str]
) -> list[ResolutionBar]:
    """Kept images per short-side class of their own bin ([N] short sides, bin names and
    sources), one bar per class, drawn over exactly the sizes the class holds: the class
    starting at 0 begins at its smallest image (a log axis has no 0), the open one ends past
    its largest."""
    classes: dict[str, tuple[int, int | None, list[int]]] = {}  # name -> low, high, rows
    for row, bin_name in enumerate(bins):
        name, low, high = short_side_class(bin_name)
        classes.setdefault(name, (low, high, []))[2].append(row)
    bars = []
    for name in sorted(classes, key=lambda n: classes[n][0]):
        low, high, members = classes[name]
        sizes = [int(short_sides[i]) for i in members]
        left = float(low) if low > 0 else max(1.0, 0.9 * min(sizes))
        right = float(high + 1) if high is not None else float(max(2 * low, max(sizes) + 1))
        bars.append(
            ResolutionBar(
                name=name,
                low=low,
                high=high,
                images=dict(sorted(Counter(sources[i] for i in members).items())),
                left=left,
                right=right,
            )
        )
    return bars


def resolution_figure(bars: list[ResolutionBar], title: str = "Resolution of kept images"):
    """Stacked bars per source, each bar one short-side class of the bins, its name above it."""
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter  # with pyplot

    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    axis.set_xscale("log")
    sources = sorted({s for bar in bars for s in bar.images})
    bottoms = [0] * len(bars)
    for source in sources:
        heights = [bar.images.get(source, 0) for bar in bars]
        axis.bar(
            [bar.left for bar in bars],
            heights,
            width=[bar.right - bar.left for bar in bars],
            bottom=bottoms,
            align="edge",
            edgecolor="white",
            linewidth=0.8,
            label=source,
        )
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    for bar, total in zip(bars, bottoms, strict=True):
        centre = (bar.left * bar.right) ** 0.5  # the middle of the bar on a log axis
        axis.annotate(
            bar.name,
            (centre, total),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    if bars:  # plain numbers at the classes' edges, not 10^2
        edges = sorted({bar.low for bar in bars if bar.low > 0}) or [round(bars[0].left)]
        axis.xaxis.set_major_locator(FixedLocator(edges))
        axis.xaxis.set_minor_locator(NullLocator())
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.set_xlim(bars[0].left * 0.9, bars[-1].right * 1.1)
        axis.set_ylim(0, max(bottoms) * 1.15 + 1)
        axis.legend(fontsize=7, ncol=2)
    axis.set_xlabel("short side (px); each bar is one short-side class of the resolution bins")
    axis.set_ylabel("images")
    axis.set_title(title)
    figure.tight_layout()
    return figure


def _display_8bit(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    low, high = np.percentile(image, [1, 99])
    return np.clip((image.astype(np.float32) - low) * 255.0 / max(high - low, 1.0), 0, 255).astype(
        np.uint8
    )


def pick_samples(dataset: Path, count: int, seed: int) -> dict[str, set[int]]:
    """Seeded picks: shard relpath -> positions in it."""
    shards = info_shards(read_info(dataset))
    total = sum(n for _, n in shards)
    rng = np.random.default_rng(seed)
    picks = (
        sorted(rng.choice(total, size=min(count, total), replace=False).tolist()) if total else []
    )
    wanted: dict[str, set[int]] = {}
    start = 0
    for name, length in shards:
        chosen = {p - start for p in picks if start <= p < start + length}
        if chosen:
            wanted[name] = chosen
        start += length
    return wanted


def _samples_from_shard(path: Path, positions: set[int]) -> list[tuple[np.ndarray, dict]]:
    """The picked samples of one shard, decoded; a member too large for its kind or a PNG
    that ingest would refuse before decoding (a bomb, a lying header) is left out of the grid."""
    found = []
    position = -1
    with tarfile.open(path) as tar:
        meta = None
        for member in tar:
            if member.name.endswith(".json"):
                position += 1
                wanted = position in positions and member.size <= MAX_JSON_BYTES
                meta = json.loads(tar.extractfile(member).read()) if wanted else None
            elif member.name.endswith(".png") and meta is not None:
                image = _decode_bounded(tar.extractfile(member).read(MAX_PNG_BYTES + 1))
                if image is not None:
                    found.append((_display_8bit(image), meta))
                meta = None
    return found


def _decode_bounded(data: bytes) -> np.ndarray | None:
    """A PNG member decoded when it passes ingest's checks before decoding, else None."""
    if len(data) > MAX_PNG_BYTES:
        return None
    try:
        check_before_decode(data)
    except RejectedImage:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def letterbox(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """`image` scaled to fit [height, width], centred on white: every grid cell the same size."""
    scale = min(width / image.shape[1], height / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    cell = np.full((height, width), 255, dtype=np.uint8)
    y, x = (height - size[1]) // 2, (width - size[0]) // 2
    cell[y : y + size[1], x : x + size[0]] = small
    return cell


def sample_grid(dataset: Path, path: Path, count: int, seed: int) -> int:
    """A grid of `count` seeded samples in equal cells, each captioned source / bin / size."""
    samples = []
    for name, positions in pick_samples(dataset, count, seed).items():
        samples += _samples_from_shard(tar_path(dataset, name), positions)
    plt = _pyplot()
    rows = max(1, -(-len(samples) // GRID_COLUMNS))
    figure, axes = plt.subplots(
        rows, GRID_COLUMNS, figsize=(GRID_COLUMNS * 2.0, rows * 2.1), dpi=100, squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for axis, (image, meta) in zip(axes.flat, samples, strict=False):
        axis.imshow(letterbox(image, *CELL), cmap="gray", vmin=0, vmax=255)
        caption = f"{meta['source']}  {meta['width']}x{meta['height']}\n{meta['res_bin']}"
        axis.text(0.5, -0.03, caption, transform=axis.transAxes, ha="center", va="top", fontsize=7)
    figure.subplots_adjust(
        left=0.01, right=0.99, bottom=0.1 / rows, top=0.99, wspace=0.06, hspace=0.3
    )
    save_figure(figure, path)
    plt.close(figure)
    return len(samples)


# ----------------------------------------------------------------------------- the report


def _figures(dataset: Path, out: Path, numbers: dict, config: ReportConfig) -> None:
    kept = read_sidecars(dataset).to_pydict()
    sources = sorted(set(kept["source"]))
    by_source = {
        s: np.array([i for i, src in enumerate(kept["source"]) if src == s]) for s in sources
    }
    short = np.minimum(np.array(kept["width"]), np.array(kept["height"]))
    entropy = np.array([e if e is not None else np.nan for e in kept["entropy"]], dtype=float)
    bars = resolution_bars(short, kept["res_bin"], kept["source"])
    numbers["resolution_bars"] = [asdict(bar) for bar in bars]
    plt = _pyplot()
    figure = resolution_figure(bars)
    save_figure(figure, out / "resolution_hist.png")
    plt.close(figure)
    _histogram(
        out / "entropy_hist.png",
        {s: entropy[i][~np.isnan(entropy[i])] for s, i in by_source.items()},
        "entropy of the 8-bit view (bits)",
        "Entropy of kept images",
    )
    numbers["sample_grid_images"] = sample_grid(
        dataset, out / "sample_grid.png", config.grid_samples, config.seed
    )


def report(config: ReportConfig) -> ReportSummary:
    dataset = Path(config.dataset)
    numbers = gather_numbers(dataset)
    report_dir = dataset_file(dataset, REPORT_DIR)  # refused when it is a link out of the folder
    own_folder = config.out is None or Path(config.out).resolve() == report_dir.resolve()
    if own_folder and read_owned(dataset) is None:
        raise FileNotFoundError(
            f"{dataset} was not written by `inf590k shard` (no metadata/files.json): pass --out "
            "to write the report elsewhere"
        )
    out = report_dir if own_folder else Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _figures(dataset, out, numbers, config)
    write_text_atomic(out / "report.json", json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    if own_folder:
        write_card(dataset)  # the card now shows these statistics and figures
    else:
        write_text_atomic(out / "dataset_card.md", card_text(dataset))
    return ReportSummary(
        out=out,
        samples=numbers["samples"],
        sources=len(numbers["sources"]),
        bins=len(numbers["bins"]),
    )
