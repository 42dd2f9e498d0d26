"""The dataset card (README.md) and licence list of a dataset folder, from its own files.

Written by `inf590k shard` and again by `inf590k report` (which adds the statistics and
figures), so the card always describes the shards beside it: the Hub reads its YAML (a config
per bin and a default `all`, `dataset_info.features` with `cls` a ClassLabel named by source
id) and `datasets.load_dataset(FOLDER)` reads exactly those files.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from inf590k.dataset.card_yaml import ALL_CONFIG, bins_of, card_yaml, split_of
from inf590k.dataset.layout import (
    CARD_FILENAME,
    COUNTS_PATH,
    DATA_DIRNAME,
    INFO_PATH,
    LICENSES_PATH,
    REPORT_DIR,
    REPORT_FILES,
    SOURCES_PATH,
    SUMS_PATH,
    dataset_file,
    info_shards,
    read_info,
    read_sources_table,
)
from inf590k.fsutil import plural, write_text_atomic

REPO_PLACEHOLDER = "OWNER/NAME"
COPY_PLACEHOLDER = "PATH/TO/COPY"
# How `pixel_sha256` is made (inputs/fingerprint.py `pixel_digest`), as the card shows it: two
# lines over a sample as `datasets` gives it (`png` a PIL "L" image, `json` a dict).
PIXEL_SHA256_SNIPPET = (
    'pixels = np.asarray(sample["png"])  # [H, W] uint8: the 8-bit view',
    'assert hashlib.sha256(f"{pixels.shape[0]}x{pixels.shape[1]}:".encode() + pixels.tobytes())'
    '.hexdigest() == sample["json"]["pixel_sha256"]',
)
EXCLUDED_MEANING = {  # catalog reason kinds of excluded rows, as a reader would say them
    "video stride": "frames skipped by the video stride",
}
# Manifests name the visible half of a pair by its place ("visible half (RGB)", the standard
# rules' "visible image folder", TNO's "visible band folder", Anti-UAV's "visible video"): the
# catalogue keeps those reasons as written (queries and manifests rely on them) and the card
# counts them under one name.
VISIBLE_HALF = "visible half"
VISIBLE_KINDS = re.compile(r"^visible (half|image|band|video)\b")


def excluded_meaning(kind: str) -> str:
    """How the card names a kind of excluded row (its catalog reason without specifics)."""
    if VISIBLE_KINDS.match(kind):
        return VISIBLE_HALF
    return EXCLUDED_MEANING.get(kind, kind)


def info_sha256(dataset: Path) -> str:
    return hashlib.sha256(dataset_file(dataset, INFO_PATH).read_bytes()).hexdigest()


def read_report(dataset: Path) -> dict | None:
    path = dataset_file(dataset, f"{REPORT_DIR}/{REPORT_FILES[0]}")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fresh_report(dataset: Path) -> dict | None:
    """The report's numbers when metadata/report/ was written for the data/_info.json that is
    there now; None when it is missing or stale."""
    numbers = read_report(dataset)
    fresh = (
        bool(numbers)
        and numbers.get("info_sha256") == info_sha256(dataset)
        and all(dataset_file(dataset, f"{REPORT_DIR}/{name}").is_file() for name in REPORT_FILES)
    )
    return numbers if fresh else None


def report_is_fresh(dataset: Path) -> bool:
    """metadata/report/ was written for the data/_info.json that is there now."""
    return fresh_report(dataset) is not None


















# ----------------------------------------------------------------------------- body


def plain_text(text: object) -> str:
    """`text` (names, licences: given by manifests and folder sources) as literal Markdown
    text on one line: no raw HTML (`<`, `>` as entities), line breaks as spaces."""
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;")


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(plain_text(c).replace("|", "/") for c in row) + " |" for row in rows]
    return lines


def citation_lines(source_id: str, name: str, homepage: str, citation: str) -> list[str]:
    """A source's entry in the citations list. A citation of several lines (BibTeX, say) is a
    code block under it, shown as written; one line stays on the entry's line, as text."""
    link = f" ({plain_text(homepage)})" if homepage else ""
    head = f"- **{source_id}**: {plain_text(name)}{link}."
    lines = citation.strip().splitlines()
    if len(lines) <= 1:
        return [f"{head} {plain_text(citation or 'no citation recorded')}"]
    fence = "`" * max(3, 1 + max(len(run) for run in re.findall(r"`+", citation) or [""]))
    return [head, "", f"  {fence}text", *(f"  {line}".rstrip() for line in lines), f"  {fence}"]


def excluded_summary(counts: dict) -> str:
    """ "visible half 12, frames skipped by the video stride 40" from the catalog reasons."""
    kinds: dict[str, int] = {}
    for per_source in counts.values():
        for kind, n in per_source.get("reasons", {}).get("excluded", {}).items():
            label = excluded_meaning(kind)
            kinds[label] = kinds.get(label, 0) + n
    return ", ".join(f"{k} {n:,}" for k, n in sorted(kinds.items(), key=lambda x: -x[1]))


def _provenance(table: list[dict], counts: dict) -> list[str]:
    present = [e for e in table if e["samples"] > 0 or e["id"] in counts]
    kinds = {
        k: sum(1 for e in present if e.get("kind") == k)
        for k in ("public", "self-collected", "synthetic")
    }
    parts = []
    if kinds["public"]:
        parts.append(plural(kinds["public"], "public source"))
    if kinds["self-collected"]:
        parts.append(plural(kinds["self-collected"], "self-collected folder"))
    if kinds["synthetic"]:
        parts.append(
            plural(kinds["synthetic"], "synthetic source") + " (frames made by `inf590k synth`)"
        )
    total = {
        k: sum(c.get(k, 0) for c in counts.values())
        for k in ("found", "ok", "duplicate", "rejected", "excluded")
    }
    excluded = excluded_summary(counts)
    return [
        f"Built with the `inf590k` toolkit from {plural(total['found'], 'file')} of "
        f"{', '.join(parts) or 'no sources'}: {total['ok']:,} kept, "
        f"{plural(total['duplicate'], 'duplicate')} removed, {total['rejected']:,} rejected, "
        f"{total['excluded']:,} excluded" + (f" ({excluded})." if excluded else "."),
    ]


def _sources_section(table: list[dict], counts: dict) -> list[str]:
    rows = []
    for e in table:
        if e["samples"] == 0 and e["id"] not in counts:
            continue
        c = counts.get(e["id"], {})
        rows.append(
            [
                e["id"],
                e["class_id"],
                e["name"],
                e.get("kind", ""),
                e["modality"],
                e["samples"],
                c.get("found", ""),
                c.get("duplicate", ""),
                c.get("rejected", ""),
                c.get("excluded", ""),
                e["license"],
            ]
        )
    lines = [
        "## Sources",
        "",
        "`cls` is the class id below (`ClassLabel` names are the source ids);",
        "ids never change when a later build adds sources.",
        "",
    ]
    lines += _table(
        [
            "source",
            "class id",
            "name",
            "kind",
            "modality",
            "kept",
            "found",
            "duplicate",
            "rejected",
            "excluded",
            "license",
        ],
        rows,
    )
    lines += ["", "### Citations", ""]
    for e in table:
        if e["samples"] == 0:
            continue
        lines += citation_lines(e["id"], e["name"], e.get("homepage") or "", e.get("citation") or "")
    return lines


def _licenses_section(table: list[dict]) -> list[str]:
    lines = [
        "## Licenses",
        "",
        f"`license: other`: every image keeps the licence of its source, listed per source in "
        f"[{LICENSES_PATH}]({LICENSES_PATH}), above, and in the `license` field of its JSON. "
        "Several sources state none, and some restrict use to research. Check the terms of every "
        "source before you redistribute or use the images commercially.",
    ]
    if any(e.get("kind") == "synthetic" and e["samples"] for e in table):
        lines += [
            "",
            "Synthetic frames are procedural renders in a public source's folder layout; "
            "they are not that source's images and carry the synth licence, not its licence.",
        ]
    return lines


def _statistics_section(numbers: dict | None) -> list[str]:
    if not numbers:
        return ["## Statistics", "", "Run `inf590k report FOLDER` for the statistics and figures."]
    lines = ["## Statistics", ""]
    rows = []
    for label, key in (("short side (px)", "short_side"), ("entropy (bits)", "entropy_bits")):
        d = numbers.get(key) or {}
        if d:
            rows.append([label, *(f"{d[k]:.1f}" for k in ("min", "p5", "median", "p95", "max"))])
    lines += _table(["", "min", "p5", "median", "p95", "max"], rows)
    depth = ", ".join(f"{k}-bit {v:,}" for k, v in numbers.get("bit_depth", {}).items())
    modality = ", ".join(f"{k} {v:,}" for k, v in numbers.get("modality", {}).items())
    lines += ["", f"Bit depth of the source files: {depth}; modality: {modality}.", ""]
    lines += [
        f"![resolution]({REPORT_DIR}/resolution_hist.png)",
        f"![entropy]({REPORT_DIR}/entropy_hist.png)",
        "",
        f"![samples]({REPORT_DIR}/sample_grid.png)",
    ]
    return lines


def _usage_section(info: dict) -> list[str]:
    split = split_of(info)
    bins = bins_of(info)
    example_bin = next(iter(bins))
    last = len(bins[example_bin]) - 1
    hub = f"https://huggingface.co/datasets/{REPO_PLACEHOLDER}/resolve/main"
    lines = [
        "## Load and stream",
        "",
        f"`{REPO_PLACEHOLDER}` and `{COPY_PLACEHOLDER}` below are placeholders: put this dataset's "
        "repo id and the folder of a local copy "
        f"(`hf download {REPO_PLACEHOLDER} --repo-type dataset --local-dir {COPY_PLACEHOLDER}`).",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'repo_id = "{REPO_PLACEHOLDER}"  # placeholder: the repo id, or the folder of a local copy',
        f'everything = load_dataset(repo_id, split="{split}")  # the default config, `{ALL_CONFIG}`',
        f'one_bin = load_dataset(repo_id, "{example_bin}", split="{split}", streaming=True)',
        "sample = next(iter(one_bin))",
        'image, row, source = sample["png"], sample["json"], sample["cls"]  # PIL "L", dict, class id',
        'print(image.size, row["uid"], everything.features["cls"].int2str(source))',
        "```",
        "",
        'With webdataset (`decode("l")`: grey float images in [0, 1]; `"l8"` for uint8):',
        "",
        "```python",
        "import glob",
        "",
        "import webdataset as wds",
        "",
        f'folder = "{COPY_PLACEHOLDER}"  # placeholder: the folder of a local copy',
        'shards = sorted(glob.glob(f"{folder}/data/*/*.tar"))',
        f'# or over HTTP: "{hub}/data/{example_bin}/{example_bin}-{{000000..{last:06d}}}.tar"',
        'for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False).decode("l"):',
        '    image, row, source = sample["png"], sample["json"], sample["cls"]  # [H, W] float, dict, int',
        "    break",
        "```",
        "",
        'With timm (its `wds/` reader reads `data/_info.json`; pass `input_img_mode="L"`, the '
        "images have one channel):",
        "",
        "```python",
        "import timm.data",
        "",
        f'folder = "{COPY_PLACEHOLDER}"  # placeholder; or root="{hub}/data"',
        f'dataset = timm.data.create_dataset("wds/inf590k", root=f"{{folder}}/data", split="{split}", '
        'input_img_mode="L")',
        "```",
        "",
        "Pretraining with the `inf590k` toolkit streams every shard `data/_info.json` lists (it "
        "also gives the epoch length): pass the folder or the index URL (set `HF_TOKEN` for a "
        "private repo):",
        "",
        "```",
        f"inf590k pretrain --shards {hub}/data/_info.json \\",
        "    --model dugi_mae_base --batch-size 256 --out runs/dugi",
        "```",
    ]
    if "npy" in info.get("members", []):
        lines += [
            "",
            "16-bit frames: `png` is always the 8-bit view; the raw 16-bit pixels of frames whose "
            "file was 16-bit are in the `npy` member (None for the others), read losslessly with "
            "numpy:",
            "",
            "```python",
            "import io",
            "",
            "import numpy as np",
            "",
            'raw = np.asarray(sample["npy"], dtype=np.uint16)  # datasets: nested lists -> [H, W]',
            "raw = np.load(io.BytesIO(npy_bytes))  # the member's bytes (webdataset without decode)",
            "```",
        ]
    return lines


def _fields_section() -> list[str]:
    return [
        "## Fields",
        "",
        "`json` is the image's catalog row (`uid`, `source`, `relpath`, sizes before and after "
        "the border crop, `bit_depth`, `entropy`, `phash`, `res_bin`, ...). `file_sha256` is "
        "the sha256 of the source file's bytes. `pixel_sha256` is the sha256 of the stored "
        '8-bit pixels with their shape in front, `sha256("HxW:" + pixels)` (H rows, W '
        "columns, then the pixels row by row as uint8), so a reshaped copy differs; "
        "recompute it from a sample:",
        "",
        "```python",
        "import hashlib",
        "",
        "import numpy as np",
        "",
        "sample = next(iter(one_bin))  # a sample as `datasets` gives it (above)",
        *PIXEL_SHA256_SNIPPET,
        "```",
    ]


def _files_section() -> list[str]:
    return [
        "## Files",
        "",
        "- `data/<bin>/<bin>-NNNNNN.tar`: the shards; `data/_info.json`: timm's index (shard "
        "names relative to `data/`, sample counts) and the sources with their class ids and licences",
        "- `metadata/shards/<bin>/`: the catalog rows of each shard, in tar order, and its stats",
        f"- `{SUMS_PATH}`: `sha256sum -c {SUMS_PATH}` in the dataset folder, or `inf590k verify "
        "FOLDER` (also re-reads every sample)",
        f"- `metadata/catalog.parquet`: every file found, kept or not, with its reason; `{SOURCES_PATH}`: "
        f"the sources table; `{COUNTS_PATH}`: per-source counts; `metadata/sizes.json`: samples per shard",
        f"- `{REPORT_DIR}/`: the report's numbers and figures",
    ]


def card_text(dataset: Path) -> str:
    dataset = Path(dataset)
    info = read_info(dataset)
    table = read_sources_table(dataset)
    counts = json.loads(dataset_file(dataset, COUNTS_PATH).read_text())
    numbers = fresh_report(dataset)
    shards = info_shards(info)
    samples = sum(n for _, n in shards)
    members = ", ".join(f"`{{uid}}.{m}`" for m in info.get("members", ["cls", "json", "png"]))
    body = [
        f"# {info.get('name', 'inf590k')}",
        "",
        f"{plural(samples, 'single-channel infrared (thermal) image')} in "
        f"{plural(len(shards), 'WebDataset shard')}, one folder per resolution bin under `data/`. "
        f"Each sample holds {members}: `png` the lossless 8-bit image, `json` its catalog row, "
        "`cls` the class id of its source"
        + (", `npy` the raw 16-bit frame where the file was 16-bit." if "npy" in members else "."),
        "",
        *_provenance(table, counts),
        "",
        "## Configurations",
        "",
        f"`{ALL_CONFIG}` (the default) reads every shard; each resolution bin is a config of its "
        "own (`s<short side range>_r<aspect ratio x100 range>`).",
        "",
    ]
    rows = [[ALL_CONFIG, f"{samples:,}", len(shards), f"`{DATA_DIRNAME}/*/*.tar`"]]
    for bin_name, in_bin in bins_of(info).items():
        rows.append(
            [
                bin_name,
                f"{sum(n for _, n in in_bin):,}",
                len(in_bin),
                f"`{DATA_DIRNAME}/{bin_name}/*.tar`",
            ]
        )
    body += _table(["config", "samples", "shards", "files"], rows)
    for section in (
        _sources_section(table, counts),
        _licenses_section(table),
        _statistics_section(numbers),
        _usage_section(info),
        _fields_section(),
        _files_section(),
    ):
        body += ["", *section]
    return "---\n" + card_yaml(info, table, samples) + "---\n\n" + "\n".join(body) + "\n"


# SPDX ids of the licences datasets use (README: a folder source's licence as an SPDX id)
SPDX_DATA_LICENCES = re.compile(
    r"^(CC-BY(-NC)?(-ND|-SA)?-[1-4]\.0|CC0-1\.0|MIT|Apache-2\.0|BSD-[23]-Clause|"
    r"(A|L)?GPL-[23]\.0(-only|-or-later)?|MPL-2\.0|ODbL-1\.0|PDDL-1\.0|CDLA-(Permissive|Sharing)-[12]\.0)$"
)


def spdx_link(licence: str) -> str:
    """The SPDX page of a licence given by its SPDX id (CC-BY-NC-4.0), else ""."""
    return f"https://spdx.org/licenses/{licence}.html" if SPDX_DATA_LICENCES.match(licence) else ""


def licenses_text(table: list[dict]) -> str:
    lines = [
        "# Licences per source",
        "",
        "Every image keeps the licence of its source. Check each one before you redistribute "
        "the images or use them commercially.",
        "",
    ]
    rows = [
        [
            e["id"],
            e["name"],
            e.get("kind", ""),
            e["license"],
            e.get("license_link") or spdx_link(e["license"]) or e.get("homepage") or "",
        ]
        for e in table
        if e["samples"] > 0
    ]
    return "\n".join(lines + _table(["source", "name", "kind", "licence", "link"], rows)) + "\n"


def drop_stale_report(dataset: Path) -> None:
    """A report that describes an earlier data/_info.json is removed (its files are the
    folder's own), so the card never shows another dataset's numbers."""
    first = dataset_file(dataset, f"{REPORT_DIR}/{REPORT_FILES[0]}")
    if first.exists() and not report_is_fresh(dataset):
        for name in REPORT_FILES:
            dataset_file(dataset, f"{REPORT_DIR}/{name}").unlink(missing_ok=True)


def write_card(dataset: Path) -> Path:
    """README.md and metadata/LICENSES.md of a dataset folder, from its index files (a stale
    report is dropped first). `inf590k shard` and `build` call it once the shards are written;
    it is the dataset side's step, so re-running it on a finished folder is cheap and safe."""
    dataset = Path(dataset)
    drop_stale_report(dataset)
    write_text_atomic(
        dataset_file(dataset, LICENSES_PATH), licenses_text(read_sources_table(dataset))
    )
    card = dataset_file(dataset, CARD_FILENAME)
    write_text_atomic(card, card_text(dataset))
    return card
