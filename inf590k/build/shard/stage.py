"""Shard: kept catalog rows -> a dataset folder that is the Hugging Face dataset repo itself.

Layout (DESIGN.md "Shard format"); `hf upload`/`inf590k publish` send it as it is, and
`datasets.load_dataset(FOLDER)`, timm, webdataset and `inf590k verify` read it locally and as
downloaded::

    README.md                                    the card: a config per bin + `all`, features
    data/_info.json                              timm's index (names relative to data/) + sources
    data/<bin>/<bin>-000000.tar                  {uid}.cls, {uid}.json, [{uid}.npy], {uid}.png
    metadata/shards/<bin>/<bin>-000000.parquet   the sidecar rows of that shard, in tar order
    metadata/shards/<bin>/<bin>-000000_stats.json  count, bytes, sha256, plan: the done marker
    metadata/sizes.json                          data/<bin>/<shard>.tar -> samples
    metadata/SHA256SUMS                          `sha256sum -c metadata/SHA256SUMS` in the folder
    metadata/sources.json                        the sources table: stable class ids, licences
    metadata/counts.json                         per-source catalog counts and reasons
    metadata/catalog.parquet                     the whole catalog (rejected rows too)
    metadata/LICENSES.md                         per-source licence terms (the card's license_link)
    metadata/files.json                          every file `inf590k` writes here: ownership
    metadata/report/                             `inf590k report`: numbers and figures

Members: `.png` is always the 8-bit view (every client decodes it alike); with --keep-16bit a
16-bit frame also gets `.npy`, its raw pixels as a NumPy array (webdataset and datasets both
decode `.npy`). `.cls` is the source's class id from the sources table: ids stay fixed when a
later build adds sources. `.json` holds the per-sample catalog fields (not status, reason and
split, which are the same for every sample).

Determinism: the shard plan (which uid goes to which shard, in which order) is computed up
front from the catalog alone: uids of a bin sorted, then shuffled by a generator seeded from
(seed, bin); each bin is cut into shards of near-equal length, all within 2x of the shortest
(unless that one is under --min-shard-length) and their count a multiple of --shard-multiple,
never by what a worker did. Tar members have a fixed
mtime, uid/gid 0, empty owner names and mode 0644, sorted per sample; so any worker count, and
a second run from scratch, writes byte-identical tars.

Resume and ownership: a shard is done when its `_stats.json` names the same plan digest and its
tar has the recorded size; anything else is rewritten (tar.tmp, fsync, rename, then sidecars).
`metadata/files.json` is written before anything else: a non-empty folder without it is not
ours and is refused; only files it names are ever replaced or removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import multiprocessing
import os
import re
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from inf590k.build import catalog as cat
from inf590k.build import lineage
from inf590k.execution import progress
from inf590k.fsutil import available_cores, file_sha256, open_new, plural, write_text_atomic
from inf590k.dataset.layout import (  # noqa: F401 - the layout's names, as the dataset tools import them
    CARD_FILENAME,
    CATALOG_PATH,
    COUNTS_PATH,
    DATA_DIRNAME,
    FILES_PATH,
    INFO_FILENAME,
    INFO_PATH,
    LICENSES_PATH,
    METADATA_DIRNAME,
    REPORT_DIR,
    SIDECAR_DIR,
    SIZES_PATH,
    SOURCES_PATH,
    STATS_SUFFIX,
    SUMS_PATH,
    UnsafePathError,
    check_relpath,
    dataset_file,
    read_splits,
)
from inf590k.execution.ray_cluster import open_executor
from inf590k.execution.local import LocalExecutor, pool_start_method, sigterm_as_interrupt

FORMAT_VERSION = 3  # bump when the bytes of a sample change for the same catalog row
FIXED_MTIME = 1_700_000_000  # 2023-11-14; any constant works, 0 upsets some tar tools
MIN_SHARD_LENGTH = 16  # samples: balancing never cuts every shard below this for one small bin
SAMPLE_OVERHEAD_BYTES = 4096  # 3 tar headers + JSON + PNG headers, per sample (estimate)
FLUSH_EVERY = 32 << 20  # bytes between background fdatasync calls while a tar is written
READ_BATCH = 256  # files read at once from folder and zip sources (bounds memory)

REPORT_FILES = ("report.json", "resolution_hist.png", "entropy_hist.png", "sample_grid.png")
WRITTEN_BY = "inf590k shard"
# What a copy made by `hf download --local-dir` (or a git clone of the repo) adds beside ours.
HUB_EXTRAS = (".gitattributes", ".cache/", ".git/", ".huggingface/")

DATASET_WIDE_FIELDS = ("status", "reason", "split")  # same for every sample: not in .json
SAMPLE_FIELDS = tuple(n for n in cat.COLUMN_NAMES if n not in DATASET_WIDE_FIELDS)


@dataclass(frozen=True)
class ShardConfig:
    """One field per `inf590k shard` option."""

    build: Path
    out: Path
    max_count: int = 10_000  # samples per shard
    max_size: int = 1_000_000_000  # bytes per shard, counted as raw pixels + overhead: a bound
    shard_multiple: int = 1  # shard count a multiple of this (ranks x loader workers)
    min_shard_length: int = MIN_SHARD_LENGTH  # shortest shard the 2x balance may cut to
    keep_16bit: bool = False  # add the raw 16-bit frame (.npy) to rows whose file was 16-bit
    png_level: int = 1  # zlib level of cv2.imencode: encoding dominates the build
    seed: int = 0  # sample order inside each bin
    split: str = "train"
    name: str = "inf590k"  # the dataset name in _info.json
    workers: int = 0  # 0: one process per core
    progress: bool = True
    executor: str = "local"  # "local" (process pool) or "ray" (see inf590k.execution.ray_cluster)
    ray_address: str | None = None  # a Ray cluster; None: RAY_ADDRESS, else a Ray started here


@dataclass(frozen=True)
class ShardJob:
    """Everything one worker needs to write one shard."""

    build: Path
    out: Path
    relpath: str  # "<bin>/<bin>-000000.tar", relative to data/ (as _info.json names it)
    rows: tuple[dict, ...]  # catalog rows in tar order
    classes: tuple[int, ...]  # class id per row (the .cls member)
    jsons: tuple[bytes, ...]  # the .json member per row
    keep_16bit: bool
    png_level: int
    plan: str  # digest of everything that decides the tar bytes


@dataclass
class ShardSummary:
    shards: int
    written: int
    reused: int
    samples: int
    bytes: int
    seconds: float
    out: Path
    lengths: tuple[int, int] = (0, 0)  # shortest and longest shard, samples
    short_bins: str = ""  # a line naming bins too small for the 2x balance

    def __str__(self) -> str:
        rate = self.samples / self.seconds if self.written and self.seconds > 0 else 0.0
        line = (
            f"shard: {plural(self.samples, 'sample')} in {plural(self.shards, 'shard')} of {self.lengths[0]}-"
            f"{self.lengths[1]} ({self.bytes / 1e6:.1f} MB), {self.written} written + "
            f"{self.reused} already done, {self.seconds:.1f} s ({rate:.0f} img/s) -> {self.out}"
        )
        return "\n".join(filter(None, [line, self.short_bins]))


# ----------------------------------------------------------------------------- paths


def _shard_stem(relpath: str) -> str:
    """`<bin>/<bin>-000000` of a shard name, checked: a plain relative path ending in .tar."""
    check_relpath(relpath, "shard name")
    if not relpath.endswith(".tar") or relpath == ".tar":
        raise UnsafePathError(f"shard name {relpath!r} does not end in .tar")
    return relpath[: -len(".tar")]


def tar_path(out: Path, relpath: str) -> Path:
    return dataset_file(out, f"{DATA_DIRNAME}/{_shard_stem(relpath)}.tar")


def sidecar_path(out: Path, relpath: str) -> Path:
    """metadata/shards/<bin>/<bin>-000000.parquet of data/<bin>/<bin>-000000.tar."""
    return dataset_file(out, f"{SIDECAR_DIR}/{_shard_stem(relpath)}.parquet")


def stats_path(out: Path, relpath: str) -> Path:
    return dataset_file(out, f"{SIDECAR_DIR}/{_shard_stem(relpath)}{STATS_SUFFIX}")


def shard_files(relpath: str) -> list[str]:
    """The dataset-relative paths one shard writes: tar, sidecar rows, stats."""
    stem = _shard_stem(relpath)
    return [
        f"{DATA_DIRNAME}/{relpath}",
        f"{SIDECAR_DIR}/{stem}.parquet",
        f"{SIDECAR_DIR}/{stem}{STATS_SUFFIX}",
    ]


def index_files() -> list[str]:
    """The dataset-relative paths every dataset folder has besides its shards."""
    return [
        CARD_FILENAME,
        INFO_PATH,
        SIZES_PATH,
        SUMS_PATH,
        SOURCES_PATH,
        COUNTS_PATH,
        CATALOG_PATH,
        LICENSES_PATH,
        FILES_PATH,
        *(f"{REPORT_DIR}/{name}" for name in REPORT_FILES),
    ]


def is_hub_extra(relpath: str) -> bool:
    return any(relpath == e or relpath.startswith(e) for e in HUB_EXTRAS if e.endswith("/")) or (
        relpath in HUB_EXTRAS
    )


def read_info(dataset: Path) -> dict:
    """data/_info.json of a dataset folder, with a one-line error when it is not one."""
    path = dataset_file(dataset, INFO_PATH)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {dataset} is not a dataset folder; write one with "
            "`inf590k shard --build BUILD --out FOLDER`"
        )
    return _read_json(path, "re-run `inf590k shard` for it, or download it again")


def _read_json(path: Path, fix: str) -> object:
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): {fix}") from error


def info_shards(info: object) -> list[tuple[str, int]]:
    """(relpath under data/, samples) of every shard _info.json lists, all splits; names and
    counts checked (`layout.read_splits`: a ValueError naming the field)."""
    return [
        (name, length)
        for split in read_splits(info).values()
        for name, length in zip(split.filenames, split.shard_lengths, strict=True)
    ]


def read_sources_table(dataset: Path) -> list[dict]:
    path = dataset_file(dataset, SOURCES_PATH)
    if not path.is_file():
        return []
    table = _read_json(path, "re-run `inf590k shard` for this folder, or download it again")
    if not isinstance(table, list) or not all(
        isinstance(e, dict) and "class_id" in e for e in table
    ):
        raise ValueError(f"{path} is not a sources table: re-run `inf590k shard` for this folder")
    return table


# ----------------------------------------------------------------------------- sample form


def _json_default(field: pa.Field) -> object:
    """The value a null becomes, so every sample has the same JSON type per key."""
    if pa.types.is_string(field.type):
        return ""
    if pa.types.is_integer(field.type):
        return -1
    if pa.types.is_floating(field.type):
        return -1.0
    if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
        return []
    raise TypeError(f"no JSON default for catalog column {field.name} ({field.type})")


def _is_string_list(field: pa.Field) -> bool:
    return pa.types.is_list(field.type) and pa.types.is_string(field.type.value_type)


def sample_json(row: Mapping) -> bytes:
    """The per-sample catalog fields as the sample's JSON: sorted keys, stable JSON types.

    Nulls become "", -1, -1.0 or [] by column type, and string lists (`tags`) are joined with
    commas into one string, so every sample has the same keys and types (readers that infer a
    schema from the first samples would otherwise fail on a later one). The sidecar parquet
    keeps the list and the dataset-wide fields.
    """
    record = {}
    for field in cat.CATALOG_SCHEMA:
        if field.name in DATASET_WIDE_FIELDS:
            continue
        value = row.get(field.name)
        if _is_string_list(field):
            value = ",".join(value or [])
        record[field.name] = _json_default(field) if value is None else value
    return json.dumps(record, sort_keys=True, separators=(",", ":")).encode()


def json_feature_types() -> dict[str, str]:
    """The `datasets` dtype of every .json field ("list<int32>" for crop_box)."""
    types = {}
    for field in cat.CATALOG_SCHEMA:
        if field.name in DATASET_WIDE_FIELDS:
            continue
        if _is_string_list(field):
            types[field.name] = "string"
        elif pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
            types[field.name] = f"list<{field.type.value_type}>"
        else:
            types[field.name] = str(field.type)
    return dict(sorted(types.items()))


def raw_npy(pixels: np.ndarray) -> bytes:
    """The raw frame as a .npy file: `numpy.load(io.BytesIO(data))` gives it back exactly."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(pixels), allow_pickle=False)
    return buffer.getvalue()


def png_params(level: int) -> list[int]:
    """cv2.imencode flags of the shards' PNGs: Up filter, Huffman-only deflate, zlib `level`.

    Chosen by bench/png.py (tables in docs/png-parameters.md). The Up filter on every row is
    what lets the loader decode only a crop's rows and columns (pretrain/pngcrop.py); with it,
    Huffman-only streams inflate ~20% faster there than RLE ones on real IR frames for 2%
    more bytes, and encode fastest. For libpng (OpenCV) it decodes ~1.6x faster than the
    adaptive default. Standard PNG, read by every decoder."""
    return [
        cv2.IMWRITE_PNG_COMPRESSION, level,
        cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP,
        cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    ]  # fmt: skip


def encode_png(pixels: np.ndarray, level: int) -> bytes:
    """1-channel lossless PNG (8- or 16-bit) with OpenCV: ~2x faster than Pillow here."""
    ok, encoded = cv2.imencode(".png", pixels, png_params(level))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for a {pixels.dtype} {pixels.shape} image")
    return encoded.tobytes()


def _tar_member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# The fixed fields of a ustar header after the size: mtime, checksum placeholder, type,
# linkname, magic, empty uname/gname/devmajor/devminor/prefix, padding (name, mode and
# ids come before).
_USTAR_MODE_IDS = b"0000644\0" + b"0000000\0" * 2
_USTAR_TAIL = (
    b"%011o\0" % FIXED_MTIME
    + b" " * 8
    + tarfile.REGTYPE
    + tarfile.NUL * 100
    + tarfile.POSIX_MAGIC
    + tarfile.NUL * (32 + 32 + 8 + 8 + 155 + 12)
)
_USTAR_MAX_SIZE = 8**11  # what 11 octal digits hold


def tar_header(name: str, size: int) -> bytes:
    """A member's header: the bytes `tarfile` writes for `_tar_member(name, size)` (PAX format,
    empty device fields for a regular file, as current Python does).

    Short ASCII names (every uid here) get a plain ustar block, built directly: tarfile's
    generic path costs as much as writing the member. Anything else goes through tarfile.
    """
    if not (name.isascii() and len(name) <= 100 and size < _USTAR_MAX_SIZE):
        return _tar_member(name, size).tobuf(
            tarfile.PAX_FORMAT, tarfile.ENCODING, "surrogateescape"
        )
    encoded = name.encode()
    block = b"".join(
        (
            encoded,
            tarfile.NUL * (100 - len(encoded)),
            _USTAR_MODE_IDS,
            b"%011o\0" % size,
            _USTAR_TAIL,
        )
    )
    checksum = b"%06o\0" % sum(block)  # over the block with 8 spaces as its checksum field
    return block[:148] + checksum + block[155:]


def tar_member_bytes(name: str, payload: bytes) -> list[bytes]:
    """A member as `tarfile.addfile` writes it to a PAX archive: header, payload, padding."""
    return [
        tar_header(name, len(payload)),
        payload,
        tarfile.NUL * (-len(payload) % tarfile.BLOCKSIZE),
    ]


def tar_end(size: int) -> bytes:
    """What `TarFile.close` appends to an archive of `size` bytes: two zero blocks, then
    zeros up to a whole record."""
    end = size + 2 * tarfile.BLOCKSIZE
    return tarfile.NUL * (2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE)


def add_sample(
    tar: BinaryIO | _HashingFile,
    uid: str,
    cls: int,
    json_bytes: bytes,
    png: bytes,
    raw: bytes | None = None,
) -> None:
    """A sample's members, sorted by extension (cls, json, npy, png), next to each other.

    The tar bytes are built here and written at once (the same bytes as `TarFile.addfile`,
    without its per-member copy loop of 16 KiB writes); `tar_end` closes the archive.
    """
    members = [("cls", str(cls).encode()), ("json", json_bytes), ("npy", raw), ("png", png)]
    parts = [
        part
        for extension, payload in members
        if payload is not None
        for part in tar_member_bytes(f"{uid}.{extension}", payload)
    ]
    tar.write(b"".join(parts))


class _HashingFile:
    """A write-only file that hashes what passes through, off the encoding thread.

    `write` hands each buffer to a writer thread (sha256 and file writes release the GIL)
    and waits only for the buffer before it: hashing and writing one sample overlap the PNG
    encoding of the next, with at most one buffer in flight. Every FLUSH_EVERY bytes the
    writer starts an fdatasync in a third thread, so the final fsync before the rename is
    short. Use as a context manager: leaving it waits for the threads (also on errors).
    """

    def __init__(self, handle: io.BufferedWriter) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0  # bytes handed to write(), in order
        self._unflushed = 0  # touched by the writer thread only
        self._writer = ThreadPoolExecutor(1)
        self._syncer = ThreadPoolExecutor(1)
        self._writing: Future | None = None
        self._syncing: Future | None = None

    def write(self, data: bytes) -> int:
        self._wait_for_write()
        self.size += len(data)
        self._writing = self._writer.submit(self._write, data)
        return len(data)

    def _write(self, data: bytes) -> None:  # on the writer thread
        self.digest.update(data)
        self.handle.write(data)
        self._unflushed += len(data)
        if self._unflushed >= FLUSH_EVERY and (self._syncing is None or self._syncing.done()):
            self.handle.flush()
            self._syncing = self._syncer.submit(os.fdatasync, self.handle.fileno())
            self._unflushed = 0

    def _wait_for_write(self) -> None:
        """Block until the buffer in flight is written; its error is raised here."""
        if self._writing is not None:
            writing, self._writing = self._writing, None
            writing.result()

    def _wait_for_threads(self) -> None:
        try:
            self._wait_for_write()
        finally:
            self._writer.shutdown()
            self._syncer.shutdown()  # waits for an fdatasync in progress

    def sync(self) -> None:
        """Everything written is hashed and on disk when this returns."""
        self._wait_for_threads()
        if self._syncing is not None:
            self._syncing.result()
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def __enter__(self) -> _HashingFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        try:
            self._wait_for_threads()  # before the caller closes the file under the writer
        except Exception:
            if exc_type is None:
                raise  # else the body's error is the one to report, not the writer's echo of it


# ----------------------------------------------------------------------------- sources table


def _most_common(values: Iterable[str | None]) -> str | None:
    counted = Counter(v for v in values if v)
    return counted.most_common(1)[0][0] if counted else None


def source_kind(source_id: str, recorded: Mapping, modality: str | None) -> str:
    """ "synthetic" (made by `inf590k synth`), "self-collected" (a folder source) or "public"."""
    if modality == "synthetic":
        return "synthetic"
    if source_id == "folder" or recorded.get("license") == "user-provided":
        return "self-collected"
    return "public"


def known_license_link(license_text: str | None) -> str | None:
    """A URL for the licences whose text names them exactly; None otherwise."""
    links = {
        "CC BY 4.0": "https://creativecommons.org/licenses/by/4.0/",
        "CC BY-SA 4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
        "CC BY-NC 4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
        "CC BY-NC-SA 4.0": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
        "CC0 1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
        "MIT": "https://opensource.org/license/mit",
    }
    return links.get((license_text or "").strip())


def sources_table(
    kept: Mapping[str, list[dict]], recorded: Mapping[str, dict], previous: list[dict]
) -> list[dict]:
    """The sources table: class ids of `previous` kept, new sources numbered after them.

    Licence and modality come from the kept rows themselves (frames made by `synth` say
    `synthetic` and carry the synth licence), names and citations from the build's record of
    the manifest unless the frames are synthetic. Sources of `previous` without samples now
    keep their row (samples 0) so that their id is never given to another source.
    """
    by_id = {entry["id"]: dict(entry, samples=0) for entry in previous}
    next_id = max((int(e["class_id"]) for e in previous), default=-1) + 1
    for source in sorted(kept):
        rows = kept[source]
        facts = recorded.get(source, {})
        modality = _most_common(r.get("modality") for r in rows) or facts.get("modality")
        kind = source_kind(source, facts, modality)
        license_text = _most_common(r.get("license") for r in rows) or facts.get("license")
        if kind == "synthetic":
            name = f"Synthetic infrared frames in the {source} folder layout"
            citation = "Rendered by `inf590k synth`: procedural frames, no real recording."
            homepage = ""
        else:
            name = facts.get("name") or source
            citation = facts.get("citation") or ""
            homepage = facts.get("homepage") or ""
        entry = by_id.get(source) or {"id": source, "class_id": next_id}
        if source not in by_id:
            next_id += 1
        entry.update(
            name=name,
            kind=kind,
            license=license_text or "unknown",
            license_link=facts.get("license_link") or known_license_link(license_text),
            modality=modality or "unknown",
            citation=citation,
            homepage=homepage,
            samples=len(rows),
        )
        by_id[source] = entry
    return sorted(by_id.values(), key=lambda e: int(e["class_id"]))


def info_sources(table: list[dict]) -> list[dict]:
    """The `sources` list of _info.json: the sources that have samples, contract fields only."""
    keys = ("id", "class_id", "name", "license", "license_link", "modality", "samples")
    return [{k: entry.get(k) for k in keys} for entry in table if entry["samples"] > 0]


# ----------------------------------------------------------------------------- planning


def _bin_rng(seed: int, bin_name: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}/{bin_name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _pixel_bytes(row: Mapping, keep_16bit: bool) -> int:
    pixels = int(row["width"]) * int(row["height"])
    raw = 2 * pixels if keep_16bit and row.get("bit_depth") == 16 else 0  # the .npy member
    return pixels + raw + SAMPLE_OVERHEAD_BYTES


def even_runs(rows: list[dict], count: int) -> list[list[dict]]:
    """`count` consecutive runs whose lengths differ by at most one."""
    base, extra = divmod(len(rows), count)
    runs, start = [], 0
    for index in range(count):
        length = base + (index < extra)
        runs.append(rows[start : start + length])
        start += length
    return runs


def _limit_count(rows: list[dict], max_count: int, max_size: int, keep_16bit: bool) -> int:
    """The fewest shards that keep every shard of a bin within the count and size limits."""
    count = max(1, math.ceil(len(rows) / max_count))
    while count < len(rows) and any(
        sum(_pixel_bytes(r, keep_16bit) for r in run) > max_size for run in even_runs(rows, count)
    ):
        count += 1
    return count


def _shortest(by_bin: Mapping[str, list[dict]], counts: Mapping[str, int]) -> int:
    return min(len(rows) // counts[b] for b, rows in by_bin.items())


def _cap_lengths(by_bin: Mapping[str, list[dict]], counts: dict[str, int], min_length: int) -> None:
    """Split bins until no shard is over twice the shortest one (if that one holds min_length+).

    A bin of n split into the fewest shards of at most 2m holds more than m per shard, so the
    shortest shard stays the shortest and every length lands within 2x of it.
    """
    shortest = _shortest(by_bin, counts)
    if shortest < min_length:
        return  # shrinking every shard to fit that bin would make them all tiny
    for bin_name, rows in by_bin.items():
        counts[bin_name] = max(counts[bin_name], math.ceil(len(rows) / (2 * shortest)))


def _round_to_multiple(
    by_bin: Mapping[str, list[dict]], counts: dict[str, int], multiple: int
) -> None:
    """Extra shards, one at a time, to the bin whose shards are longest now."""
    samples = sum(len(rows) for rows in by_bin.values())
    target = math.ceil(sum(counts.values()) / multiple) * multiple
    if target > samples:
        raise ValueError(
            f"--shard-multiple {multiple} needs {target} shards but there are only {samples} "
            "samples: lower --shard-multiple"
        )
    while sum(counts.values()) < target:
        splittable = [b for b in sorted(by_bin) if counts[b] < len(by_bin[b])]
        longest = max(splittable, key=lambda b: len(by_bin[b]) / counts[b])
        counts[longest] += 1


def shard_counts(
    by_bin: Mapping[str, list[dict]],
    max_count: int,
    max_size: int,
    keep_16bit: bool,
    multiple: int,
    min_length: int = MIN_SHARD_LENGTH,
) -> dict[str, int]:
    """Shards per bin: within the limits, lengths within 2x, total a multiple of `multiple`.

    Shards are shortened to within twice the shortest bin's shard, unless that shard holds
    fewer than `min_length` samples: then that bin stays one short shard (see `short_bins`).
    """
    counts = {b: _limit_count(rows, max_count, max_size, keep_16bit) for b, rows in by_bin.items()}
    while True:
        before = dict(counts)
        _cap_lengths(by_bin, counts, min_length)
        _round_to_multiple(by_bin, counts, multiple)
        if counts == before:
            return counts


def short_bins(lengths_by_bin: Mapping[str, list[int]]) -> str:
    """One summary line naming the bins whose shards stay under half the longest, else ""."""
    longest = max(max(lengths) for lengths in lengths_by_bin.values())
    short = {
        b: lengths for b, lengths in sorted(lengths_by_bin.items()) if 2 * min(lengths) < longest
    }
    if not short:
        return ""
    shortest = min(min(lengths) for lengths in short.values())
    names = ", ".join(f"{b} ({sum(lengths)})" for b, lengths in short.items())
    bins = "bin is" if len(short) == 1 else f"{len(short)} bins are"
    return (
        f"note: shards not within 2x: {bins} under half the longest shard ({longest}): {names}; "
        f"--min-shard-length {shortest} shortens every shard to within 2x of them"
    )


def _kept_rows(build: Path, catalog: pa.Table | None = None) -> dict[str, list[dict]]:
    """Kept rows by resolution bin, from `catalog` (the build's, read when not given)."""
    table = cat.read_catalog(build) if catalog is None else catalog
    table = table.filter(pa.compute.equal(table.column("status"), cat.STATUS_OK))
    rows = table.to_pylist()  # sorted by uid (read_catalog)
    unbinned = [r["uid"] for r in rows if not r["res_bin"]]
    if unbinned:
        raise ValueError(
            f"{len(unbinned)} kept rows have no resolution bin (e.g. {unbinned[0]}): "
            f"run `inf590k bin --build {build}` first"
        )
    by_bin: dict[str, list[dict]] = {}
    for row in rows:
        by_bin.setdefault(row["res_bin"], []).append(row)
    return by_bin


def _check_options(config: ShardConfig) -> None:
    if config.max_count < 1 or config.max_size < 1:
        raise ValueError("--max-count and --max-size must be positive")
    if config.shard_multiple < 1:
        raise ValueError(f"--shard-multiple must be 1 or more, got {config.shard_multiple}")
    if config.min_shard_length < 1:
        raise ValueError(f"--min-shard-length must be 1 or more, got {config.min_shard_length}")
    if not 0 <= config.png_level <= 9:
        raise ValueError(f"--png-level must be 0..9, got {config.png_level}")


def plan_shards(
    config: ShardConfig,
    classes: Mapping[str, int] | None = None,
    by_bin: dict[str, list[dict]] | None = None,
) -> list[ShardJob]:
    """The full, deterministic shard plan of a build (independent of workers and of `out`).

    `classes`: class id per source (the sources table); default: ids in sorted source order.
    `by_bin`: the kept rows by bin, when the caller has read them already. The options are
    checked by the caller (`shard`).
    """
    if by_bin is None:
        by_bin = _kept_rows(Path(config.build))
    if classes is None:
        sources = sorted({r["source"] for rows in by_bin.values() for r in rows})
        classes = {s: i for i, s in enumerate(sources)}
    shuffled = {}
    for bin_name in sorted(by_bin):
        rows = by_bin[bin_name]
        order = _bin_rng(config.seed, bin_name).permutation(len(rows))
        shuffled[bin_name] = [rows[i] for i in order]
    counts = shard_counts(
        shuffled,
        config.max_count,
        config.max_size,
        config.keep_16bit,
        config.shard_multiple,
        config.min_shard_length,
    )
    jobs = []
    for bin_name in sorted(shuffled):
        for index, shard_rows in enumerate(even_runs(shuffled[bin_name], counts[bin_name])):
            relpath = f"{bin_name}/{bin_name}-{index:06d}.tar"
            shard_classes = tuple(classes[r["source"]] for r in shard_rows)
            jsons = tuple(sample_json(r) for r in shard_rows)
            plan = hashlib.sha256(
                json.dumps(
                    [FORMAT_VERSION, config.keep_16bit, config.png_level, relpath, shard_classes],
                ).encode()
                + b"".join(jsons)
            ).hexdigest()
            jobs.append(
                ShardJob(
                    build=Path(config.build),
                    out=Path(config.out),
                    relpath=relpath,
                    rows=tuple(shard_rows),
                    classes=shard_classes,
                    jsons=jsons,
                    keep_16bit=config.keep_16bit,
                    png_level=config.png_level,
                    plan=plan,
                )
            )
    return jobs


# ----------------------------------------------------------------------------- writing


class SourceChanged(RuntimeError):
    """A source file is missing, unreadable or not the one ingest catalogued; one line."""


def _read_source(root: Path, source: str, relpaths: list[str]) -> dict[str, bytes]:
    """`SourceReader.read_many`, its failures as one SourceChanged line naming the file."""
    from inf590k.inputs.sources import SourceReader

    try:
        with SourceReader(root) as reader:
            found = reader.read_many(relpaths)
    except (OSError, ValueError) as error:
        name = getattr(error, "filename", None) or root
        reason = getattr(error, "strerror", None) or str(error)
        raise SourceChanged(
            f"cannot read {name} of source {source!r} ({reason}): restore it, or re-run "
            "`inf590k ingest` for that source (then dedupe, bin and shard)"
        ) from None
    missing = [r for r in relpaths if r not in found]
    if missing:
        raise SourceChanged(
            f"{missing[0]} is no longer in source {source!r} ({root}): restore it, or re-run "
            "`inf590k ingest` for that source (then dedupe, bin and shard)"
        )
    return found


def _source_kind(root: Path, source: str) -> str:
    from inf590k.inputs.sources import root_kind

    try:
        return root_kind(root)
    except (OSError, ValueError) as error:
        raise SourceChanged(f"source {source!r}: {error}") from None


def check_unchanged(row: Mapping, data: bytes, digests: dict[str, str]) -> None:
    """The file `shard` re-read must be the one ingest catalogued: same size, same sha256
    (`digests` caches a file's digest for the other frames of a video). A file edited, swapped
    or grown since would otherwise ship under its old row (hashes, dedupe decision, crop)."""
    if len(data) != row["file_bytes"]:
        change = f"{len(data)} bytes, ingest read {row['file_bytes']}"
    else:
        key = row["relpath"]
        if key not in digests:
            digests[key] = hashlib.sha256(data).hexdigest()
        if digests[key] == row["file_sha256"]:
            return
        change = "same size, other content: its sha256 differs"
    raise SourceChanged(
        f"{row['source']}/{row['relpath']} changed after ingest ({change}): re-run `inf590k "
        "ingest` for that source, then dedupe, bin and shard (or restore the file)"
    )


def _read_files(build: Path, rows: tuple[dict, ...]) -> Iterator[tuple[dict, bytes]]:
    """(row, file bytes) in row order, each checked against its row (`check_unchanged`); one
    pass per tar source, small batches otherwise."""
    recorded = cat.read_sources(build)
    whole_tar: dict[str, dict[str, bytes]] = {}  # a (compressed) tar is read in one pass
    digests: dict[str, dict[str, str]] = {}
    for start in range(0, len(rows), READ_BATCH):
        batch = rows[start : start + READ_BATCH]
        by_source: dict[str, dict[str, bytes]] = {}
        for source in sorted({r["source"] for r in batch}):
            if source in whole_tar:
                by_source[source] = whole_tar[source]
                continue
            root = Path(recorded[source]["root"])
            if _source_kind(root, source) == "tar":
                everything = [r["relpath"] for r in rows if r["source"] == source]
                by_source[source] = whole_tar[source] = _read_source(root, source, everything)
            else:
                wanted = [r["relpath"] for r in batch if r["source"] == source]
                by_source[source] = _read_source(root, source, wanted)
        for row in batch:
            data = by_source[row["source"]][row["relpath"]]
            check_unchanged(row, data, digests.setdefault(row["source"], {}))
            yield row, data


class _PixelLoader:
    """`ingest.load_stored_pixels`, with each source's policy read once per shard, not per row.

    Returns (8-bit view, raw 16-bit frame or None): the raw frame only with keep_16bit and a
    16-bit file. Still images are decoded once for both; video frames go through ingest.
    """

    def __init__(self, build: Path, keep_16bit: bool) -> None:
        from inf590k.inputs.imageio import ImagePolicy

        self.build = build
        self.keep_16bit = keep_16bit
        recorded = cat.read_sources(build)
        self.policies = {s: ImagePolicy(**info["policy"]) for s, info in recorded.items()}

    def __call__(self, row: dict, data: bytes) -> tuple[np.ndarray, np.ndarray | None]:
        from inf590k.inputs.imageio import decode, stretch_to_8bit
        from inf590k.build.ingest import load_stored_pixels, stored_form

        policy = self.policies[row["source"]]
        if row["frame"] is not None and row["frame"] >= 0:
            stored = load_stored_pixels(self.build, row, keep_16bit=self.keep_16bit, data=data)
        else:
            stored = stored_form(decode(data, policy), row, policy, self.keep_16bit)
        if stored.dtype == np.uint16:  # only with keep_16bit: the 8-bit view from the same pixels
            return stretch_to_8bit(stored, policy)[0], stored
        return stored, None


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_shard(job: ShardJob) -> dict:
    """Write one tar atomically, then its parquet sidecar, then its stats marker."""
    started = time.perf_counter()
    load = _PixelLoader(job.build, job.keep_16bit)
    target = tar_path(job.out, job.relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = target.with_name(target.name + ".tmp")
    with open_new(tmp_path) as handle, _HashingFile(handle) as hashing:
        files = _read_files(job.build, job.rows)
        for (row, data), cls, meta in zip(files, job.classes, job.jsons, strict=True):
            try:
                view8, raw = load(row, data)
            except SourceChanged:
                raise
            except Exception as error:
                raise RuntimeError(
                    f"{job.relpath}: cannot re-read {row['uid']} ({row['source']}/{row['relpath']}): "
                    f"{error}; restore the source files or re-run `inf590k ingest`"
                ) from error
            png = encode_png(view8, job.png_level)
            add_sample(hashing, row["uid"], cls, meta, png, None if raw is None else raw_npy(raw))
            progress.tick()
        hashing.write(tar_end(hashing.size))
        hashing.sync()
    os.replace(tmp_path, target)
    _fsync_dir(target.parent)
    parquet = sidecar_path(job.out, job.relpath)
    cat.write_parquet_atomic(cat.rows_to_table(list(job.rows)), parquet)
    stats = {
        "shard": job.relpath,
        "count": len(job.rows),
        "bytes": hashing.size,
        "sha256": hashing.digest.hexdigest(),
        "parquet_sha256": file_sha256(parquet),
        "plan": job.plan,
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_text_atomic(stats_path(job.out, job.relpath), json.dumps(stats, indent=1))
    return stats


def finished_stats(job: ShardJob) -> dict | None:
    """The recorded stats when this exact shard is already complete, else None."""
    try:
        stats = json.loads(stats_path(job.out, job.relpath).read_text())
        complete = (
            stats.get("plan") == job.plan
            and tar_path(job.out, job.relpath).stat().st_size == stats["bytes"]
            and sidecar_path(job.out, job.relpath).exists()
        )
    except (OSError, ValueError, KeyError):
        return None
    return stats if complete else None


# ----------------------------------------------------------------------------- ownership


def read_owned(dataset: Path) -> set[str] | None:
    """The files metadata/files.json says `inf590k` wrote here; None when there is no such index.

    The index decides what `shard` may replace or delete and what `publish` uploads, so a name
    in it that would lead outside the folder (`..`, an absolute path, a link) is refused for
    the whole folder (UnsafePathError), never skipped."""
    try:
        index = json.loads(dataset_file(dataset, FILES_PATH).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("written_by") != WRITTEN_BY:
        return None
    files = index.get("files", [])
    if not isinstance(files, list):
        raise UnsafePathError(f"{Path(dataset) / FILES_PATH}: `files` is not a list of paths")
    for name in files:
        check_relpath(name, f"{Path(dataset) / FILES_PATH} names")
    return set(files)


def _write_owned(out: Path, files: Iterable[str]) -> None:
    index = {"written_by": WRITTEN_BY, "files": sorted(set(files))}
    write_text_atomic(dataset_file(out, FILES_PATH), json.dumps(index, indent=1) + "\n", fsync=True)


def folder_files(folder: Path) -> list[str]:
    """Every file under `folder`, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


def claim_folder(out: Path, planned: set[str]) -> set[str]:
    """Refuse a folder that holds files we did not write; record `planned` as ours first.

    Returns the files the previous index named (empty for a new folder). The index written
    here names old and new files, so a run killed at any point leaves nothing unaccounted.
    """
    previous = read_owned(out)
    present = folder_files(out) if out.is_dir() else []
    if previous is None:
        foreign = [p for p in present if not is_hub_extra(p)]
        if foreign:
            raise ValueError(
                f"--out {out} already holds files that `inf590k shard` did not write (e.g. "
                f"{foreign[0]}): pick a new or empty folder"
            )
        previous = set()
    clashes = sorted(p for p in planned if p not in previous and dataset_file(out, p).exists())
    if clashes:
        raise ValueError(
            f"--out {out}: {clashes[0]} exists but `inf590k shard` did not write it: move it "
            "away or pick another folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    _write_owned(out, previous | planned)
    return previous


def remove_stale(out: Path, previous: set[str], planned: set[str]) -> int:
    """Delete files of our previous index that this plan does not write, and our temp files."""
    removed = 0
    for relpath in sorted(previous | planned):
        path = dataset_file(out, relpath)
        tmp = path.with_name(path.name + ".tmp")
        if tmp.is_symlink() or tmp.is_file():
            tmp.unlink()  # a half-written file of a killed run (a link there is not followed)
    for relpath in sorted(previous - planned):
        path = dataset_file(out, relpath)
        if path.is_file():
            path.unlink()
            removed += 1
        parent = path.parent
        while parent != out and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    return removed


# ----------------------------------------------------------------------------- index files


def reason_class(reason: str) -> str:
    """The kind of a catalog reason without its specifics: "too small (12x9 ...)" -> "too small"."""
    return re.split(r"[(:/]| of | with ", reason or "", maxsplit=1)[0].strip() or "unspecified"


def catalog_counts(table: pa.Table) -> dict[str, dict]:
    """{source: {found, ok, excluded, rejected, duplicate, reasons: {status: {kind: n}}}}."""
    counts = cat.status_counts(table)
    for source, status, reason in zip(
        *(table.column(c).to_pylist() for c in ("source", "status", "reason")), strict=True
    ):
        if status != cat.STATUS_OK:
            reasons = counts[source].setdefault("reasons", {}).setdefault(status, {})
            kind = reason_class(reason)
            reasons[kind] = reasons.get(kind, 0) + 1
    for per_source in counts.values():
        per_source.setdefault("reasons", {})
    return dict(sorted(counts.items()))


def sample_members(jobs: list[ShardJob]) -> list[str]:
    """The member extensions of the dataset's samples (npy only where raw frames were kept)."""
    raw = any(j.keep_16bit and r.get("bit_depth") == 16 for j in jobs for r in j.rows)
    return ["cls", "json", *(["npy"] if raw else []), "png"]


def _write_json(path: Path, data: object, fsync: bool = False) -> None:
    write_text_atomic(path, json.dumps(data, indent=1) + "\n", fsync=fsync)


def write_index(
    config: ShardConfig,
    jobs: list[ShardJob],
    stats: dict[str, dict],
    table: list[dict],
    catalog: pa.Table,
) -> dict:
    """data/_info.json (timm's format + sources), sizes.json, SHA256SUMS, catalog, counts."""
    out = Path(config.out)
    filenames = [j.relpath for j in jobs]
    lengths = [stats[f]["count"] for f in filenames]
    info = {
        "name": config.name,
        "splits": {
            config.split: {
                "name": config.split,
                "num_samples": sum(lengths),
                "filenames": filenames,
                "shard_lengths": lengths,
            }
        },
        "sources": info_sources(table),
        "members": sample_members(jobs),
    }
    cat.write_parquet_atomic(catalog, dataset_file(out, CATALOG_PATH))
    _write_json(dataset_file(out, COUNTS_PATH), catalog_counts(catalog))
    _write_json(dataset_file(out, SOURCES_PATH), table)
    _write_json(
        dataset_file(out, SIZES_PATH),
        {f"{DATA_DIRNAME}/{f}": n for f, n in zip(filenames, lengths, strict=True)},
    )
    sums = {CATALOG_PATH: file_sha256(dataset_file(out, CATALOG_PATH))}
    for name in filenames:
        tar_rel, parquet_rel, _ = shard_files(name)
        sums[tar_rel] = stats[name]["sha256"]
        sums[parquet_rel] = stats[name]["parquet_sha256"]
    write_text_atomic(
        dataset_file(out, SUMS_PATH), "".join(f"{sums[p]}  {p}\n" for p in sorted(sums))
    )
    _write_json(
        dataset_file(out, INFO_PATH), info, fsync=True
    )  # last: it names only finished shards
    return info


def _drop_stale_report(out: Path) -> None:
    """The report describes an earlier _info.json: remove it (its files are ours)."""
    from inf590k.dataset.card import report_is_fresh

    if dataset_file(out, f"{REPORT_DIR}/{REPORT_FILES[0]}").exists() and not report_is_fresh(out):
        for name in REPORT_FILES:
            dataset_file(out, f"{REPORT_DIR}/{name}").unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the stage


def _class_ids(
    config: ShardConfig, out: Path, by_bin: dict[str, list[dict]]
) -> tuple[list[dict], dict[str, int]]:
    """The sources table of this build (ids of the folder's earlier table kept) and its ids."""
    kept: dict[str, list[dict]] = {}
    for rows in by_bin.values():
        for row in rows:
            kept.setdefault(row["source"], []).append(row)
    previous = read_sources_table(out) if read_owned(out) is not None else []
    table = sources_table(kept, cat.read_sources(config.build), previous)
    return table, {e["id"]: int(e["class_id"]) for e in table}


def _write_all(todo: list[ShardJob], workers: int, config: ShardConfig) -> Iterator[dict]:
    """Write the shards (largest first in a pool); the bar moves per sample (per shard on Ray)."""
    total, enabled = sum(len(j.rows) for j in todo), config.progress
    if workers == 1 and config.executor == "local":
        with progress.SampleProgress(total, "shard", enabled, None):
            yield from map(write_shard, todo)
        return
    # largest shards first, so the workers finish together (the files do not depend on
    # the order in which shards are written)
    largest_first = sorted(todo, key=lambda j: -sum(_pixel_bytes(r, j.keep_16bit) for r in j.rows))
    if config.executor != "local":  # cluster workers cannot reach a local queue
        with progress.SampleProgress(total, "shard", enabled, None) as bar, sigterm_as_interrupt():
            with open_executor(
                config.executor, workers, ("inf590k.build.shard.stage",), address=config.ray_address
            ) as pool:
                for result in pool.map(write_shard, ((job,) for job in largest_first)):
                    bar.bar.update(result["count"])
                    yield result
        return
    context = multiprocessing.get_context(pool_start_method())
    with progress.SampleProgress(total, "shard", enabled, context) as bar:
        # workers die with this process; SIGTERM/Ctrl-C kills them (nothing writes on)
        with (
            sigterm_as_interrupt(),
            LocalExecutor(workers, ("inf590k.build.shard.stage",), bar.worker_init) as pool,
        ):
            yield from pool.map(write_shard, ((job,) for job in largest_first))


@lineage.stage("shard", mark=True)  # refuses a missing/unfinished/stale bin; records the run
def shard(config: ShardConfig) -> ShardSummary:
    """Write (or finish) the dataset folder of a build; byte-identical for any worker count."""
    started = time.perf_counter()
    out = Path(config.out)
    _check_options(config)
    if (out / cat.CATALOG_DIRNAME).exists() or out.resolve() == Path(config.build).resolve():
        raise ValueError(
            f"--out {out} is a build folder (it holds a catalog): write the dataset to a folder of its own"
        )
    # one writer per dataset folder, whatever build it comes from
    with lineage.folder_lock(out, "--out"):
        return _write_dataset(config, out, started)


def _write_dataset(config: ShardConfig, out: Path, started: float) -> ShardSummary:
    from inf590k.dataset.card import write_card  # the card module reads the layout of this one

    catalog = cat.read_catalog(Path(config.build))  # read once: plan, class ids, index
    by_bin = _kept_rows(Path(config.build), catalog)
    table, classes = _class_ids(config, out, by_bin)
    jobs = plan_shards(config, classes, by_bin)
    if not jobs:
        raise ValueError(f"no kept images in {config.build}: check `inf590k report` counts")
    planned = set(index_files()) | {p for j in jobs for p in shard_files(j.relpath)}
    previous = claim_folder(out, planned)
    remove_stale(out, previous, planned)
    stats: dict[str, dict] = {}
    todo = []
    for job in jobs:
        done = finished_stats(job)
        if done is None:
            todo.append(job)
        else:
            stats[job.relpath] = done
    workers = min(config.workers or available_cores(), max(1, len(todo)))
    try:
        for result in _write_all(todo, workers, config):
            stats[result["shard"]] = result
    except BaseException:  # the pool has stopped: leave no half-written .tmp behind
        remove_stale(out, set(), planned)
        raise
    write_index(config, jobs, stats, table, catalog)
    _drop_stale_report(out)
    write_card(out)
    _write_owned(out, planned)
    lengths = [len(j.rows) for j in jobs]
    by_bin: dict[str, list[int]] = {}
    for job in jobs:
        by_bin.setdefault(job.relpath.split("/")[0], []).append(len(job.rows))
    return ShardSummary(
        shards=len(jobs),
        written=len(todo),
        reused=len(jobs) - len(todo),
        samples=sum(lengths),
        bytes=sum(s["bytes"] for s in stats.values()),
        seconds=time.perf_counter() - started,
        out=out,
        lengths=(min(lengths), max(lengths)),
        short_bins=short_bins(by_bin),
    )


def read_sidecars(dataset: Path) -> pa.Table:
    """The sidecar rows of every shard data/_info.json lists (catalog schema), in its order."""
    info = read_info(dataset)
    paths = [sidecar_path(dataset, name) for name, _ in info_shards(info)]
    if not paths:
        raise FileNotFoundError(f"{Path(dataset) / INFO_PATH} lists no shards: run `inf590k shard`")
    return pa.concat_tables(pq.read_table(p, schema=cat.CATALOG_SCHEMA) for p in paths)
