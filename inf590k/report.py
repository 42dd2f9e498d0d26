"""Report: counts, histograms, bins table, a sample grid and a dataset-card draft.

Reads only the dataset folder: shard sidecars (the kept rows), `_counts.json` (per-source
catalog counts written by `inf590k shard`) and `_info.json`. Writes into DATASET/report/:

    report.json          every number below
    resolution_hist.png  short side of kept images, per source
    entropy_hist.png     8-bit-view entropy of kept images, per source
    sample_grid.png      a seeded sample of images across shards
    dataset_card.md      a Markdown dataset card draft (YAML header for the Hugging Face Hub)
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inf590k.shard import COUNTS_FILENAME, INFO_FILENAME, read_sidecars

REPORT_DIRNAME = "report"


@dataclass(frozen=True)
class ReportConfig:
    """One field per `inf590k report` option."""

    dataset: Path
    out: Path | None = None  # default: DATASET/report
    grid_samples: int = 32
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
    path = dataset / COUNTS_FILENAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: re-run `inf590k shard` for this dataset (it writes the counts)"
        )
    return json.loads(path.read_text())


def gather_numbers(dataset: Path) -> dict:
    """Every number of the report, from the dataset folder alone."""
    dataset = Path(dataset)
    kept = read_sidecars(dataset).to_pydict()
    counts = _load_counts(dataset)
    info = json.loads((dataset / INFO_FILENAME).read_text())
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
        "samples": len(kept["uid"]),
        "shards": sum(len(s.get("filenames", [])) for s in splits.values()),
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
        "licenses": {
            s: sorted(
                {
                    lic
                    for lic, src in zip(kept["license"], kept["source"], strict=True)
                    if src == s and lic
                }
            )
            for s in sources
        },
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


def _histogram(
    path: Path, values_by_source: dict[str, np.ndarray], xlabel: str, title: str, log_x: bool
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    everything = (
        np.concatenate([v for v in values_by_source.values() if len(v)])
        if values_by_source
        else np.array([])
    )
    if len(everything):
        low, high = float(everything.min()), float(everything.max())
        if log_x:
            edges = np.geomspace(max(low, 1.0), max(high, low + 1.0) * 1.01, 30)
            axis.set_xscale("log")
        else:
            edges = np.linspace(low, high + 1e-6, 30)
        names = sorted(values_by_source)
        axis.hist([values_by_source[n] for n in names], bins=edges, stacked=True, label=names)
        axis.legend(fontsize=7, ncol=2)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("images")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def _display_8bit(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    low, high = np.percentile(image, [1, 99])
    return np.clip((image.astype(np.float32) - low) * 255.0 / max(high - low, 1.0), 0, 255).astype(
        np.uint8
    )


def sample_grid(dataset: Path, path: Path, count: int, seed: int, tile: int = 128) -> int:
    """A grid of `count` samples: seeded picks of (shard, position) from the index."""
    info = json.loads((dataset / INFO_FILENAME).read_text())
    shards = [
        (f, n)
        for split in info["splits"].values()
        for f, n in zip(split["filenames"], split["shard_lengths"], strict=True)
    ]
    rng = np.random.default_rng(seed)
    total = sum(n for _, n in shards)
    picks = sorted(rng.choice(total, size=min(count, total), replace=False).tolist())
    wanted: dict[str, set[int]] = {}
    start = 0
    for filename, length in shards:
        chosen = {p - start for p in picks if start <= p < start + length}
        if chosen:
            wanted[filename] = chosen
        start += length
    tiles = []
    for filename, positions in wanted.items():
        tiles += _tiles_from_shard(dataset / filename, positions, tile)
    columns = 8
    rows = max(1, -(-len(tiles) // columns))
    grid = np.full((rows * (tile + 2), columns * (tile + 2)), 255, dtype=np.uint8)
    for i, small in enumerate(tiles):
        y, x = (i // columns) * (tile + 2), (i % columns) * (tile + 2)
        grid[y : y + small.shape[0], x : x + small.shape[1]] = small
    cv2.imwrite(str(path), grid)
    return len(tiles)


def _tiles_from_shard(tar_path: Path, positions: set[int], tile: int) -> list[np.ndarray]:
    tiles = []
    position = -1
    with tarfile.open(tar_path) as tar:
        for member in tar:
            if not member.name.endswith(".png"):
                continue
            position += 1
            if position not in positions:
                continue
            data = tar.extractfile(member).read()
            image = _display_8bit(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))
            scale = tile / max(image.shape)
            size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
            tiles.append(cv2.resize(image, size, interpolation=cv2.INTER_AREA))
    return tiles


# ----------------------------------------------------------------------------- card


def dataset_card(numbers: dict) -> str:
    """A Markdown card draft: YAML header, summary, per-source table, bins, figures."""
    total = numbers["totals"]
    size_category = next(
        (
            label
            for limit, label in (
                (1e3, "n<1K"),
                (1e4, "1K<n<10K"),
                (1e5, "10K<n<100K"),
                (1e6, "100K<n<1M"),
            )
            if numbers["samples"] < limit
        ),
        "1M<n<10M",
    )
    lines = [
        "---",
        "license: other",
        "task_categories:",
        "- image-feature-extraction",
        "tags:",
        "- infrared",
        "- thermal",
        "- webdataset",
        "- self-supervised-pretraining",
        "size_categories:",
        f"- {size_category}",
        "---",
        "",
        f"# {numbers['name']}",
        "",
        f"{numbers['samples']:,} single-channel infrared images in {numbers['shards']} WebDataset "
        f"shards, one folder per resolution bin. Each sample holds `{{uid}}.png` (lossless, "
        "1 channel), `{uid}.json` (its catalog row) and `{uid}.cls` (the source index).",
        "",
        f"Built from {total['found']:,} files of {len(numbers['sources'])} sources: "
        f"{total['kept']:,} kept, {total['duplicate']:,} duplicates removed, "
        f"{total['rejected']:,} rejected, {total['excluded']:,} excluded (not IR images).",
        "",
        "## Sources",
        "",
        "| source | found | kept | duplicate | rejected | excluded | licence |",
        "|---|---|---|---|---|---|---|",
    ]
    for source, row in numbers["sources"].items():
        licence = ", ".join(numbers["licenses"].get(source, [])) or "see source"
        lines.append(
            f"| {source} | {row['found']} | {row['kept']} | {row['duplicate']} | {row['rejected']} "
            f"| {row['excluded']} | {licence} |"
        )
    lines += ["", "## Resolution bins", "", "| bin | samples | median size |", "|---|---|---|"]
    for row in numbers["bins"]:
        lines.append(
            f"| {row['bin']} | {row['samples']} | {row['median_size'][0]}x{row['median_size'][1]} |"
        )
    lines += [
        "",
        "## Figures",
        "",
        "![resolution](resolution_hist.png) ![entropy](entropy_hist.png)",
        "",
        "![samples](sample_grid.png)",
        "",
        "## Use",
        "",
        "```python",
        "import webdataset as wds",
        'dataset = wds.WebDataset("https://.../{bin}/{bin}-{000000..000009}.tar").decode()',
        "```",
        "",
        '`_info.json` follows timm\'s webdataset format (`timm.data.create_dataset("wds/...")`);',
        "`SHA256SUMS` checks every shard (`sha256sum -c SHA256SUMS`).",
        "",
        "## Licences",
        "",
        "Each image keeps the licence of its source (the `license` field of its JSON); several",
        "sources state none. Check every source's terms before redistribution.",
        "",
    ]
    return "\n".join(lines)


def report(config: ReportConfig) -> ReportSummary:
    dataset = Path(config.dataset)
    out = Path(config.out) if config.out else dataset / REPORT_DIRNAME
    out.mkdir(parents=True, exist_ok=True)
    numbers = gather_numbers(dataset)
    kept = read_sidecars(dataset).to_pydict()
    sources = sorted(set(kept["source"]))
    by_source = {
        s: np.array([i for i, src in enumerate(kept["source"]) if src == s]) for s in sources
    }
    short = np.minimum(np.array(kept["width"]), np.array(kept["height"]))
    entropy = np.array([e if e is not None else np.nan for e in kept["entropy"]], dtype=float)
    _histogram(
        out / "resolution_hist.png",
        {s: short[i] for s, i in by_source.items()},
        "short side (px)",
        "Resolution of kept images",
        True,
    )
    _histogram(
        out / "entropy_hist.png",
        {s: entropy[i][~np.isnan(entropy[i])] for s, i in by_source.items()},
        "entropy of the 8-bit view (bits)",
        "Entropy of kept images",
        False,
    )
    numbers["sample_grid_images"] = sample_grid(
        dataset, out / "sample_grid.png", config.grid_samples, config.seed
    )
    (out / "report.json").write_text(json.dumps(numbers, indent=1, sort_keys=True) + "\n")
    (out / "dataset_card.md").write_text(dataset_card(numbers))
    return ReportSummary(
        out=out,
        samples=numbers["samples"],
        sources=len(numbers["sources"]),
        bins=len(numbers["bins"]),
    )
