"""The options of dedupe and the shapes of its decisions: near-duplicate groups, matches in an
outside set (an earlier build, a test set), shared by the stage and its report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

DEFAULT_RADIUS = 8


@dataclass(frozen=True)
class DedupeConfig:
    """One field per `inf590k dedupe` option."""

    build: Path
    radius: int = DEFAULT_RADIUS  # pHash Hamming radius of a near duplicate
    dhash_max: int = -1  # >= 0: a near pair also needs dHash distance <= this; -1: off
    against: tuple[Path, ...] = ()  # build folders, datasets or folders of evaluation images
    priority: tuple[str, ...] = ()  # source ids preferred when resolutions tie, best first
    contact_groups: int = 12  # largest groups drawn in the contact sheet; 0: no sheet
    feature_model: Path | None = None  # optional: a timm model folder for embedding dedupe
    feature_threshold: float = 0.85  # cosine similarity above which embeddings are duplicates
    feature_device: str = "cpu"
    progress: bool = True  # a bar of its steps on stderr


@dataclass(frozen=True)
class OutsideSet:
    """Fingerprints of one --against path and how a match is described."""

    fingerprints: Fingerprints
    pixel_sha256: pa.Array | pa.ChunkedArray  # [N] its digests themselves (strings): matched by value
    reason: str  # e.g. "decontamination: matches eval/" or "already in old-build"
    skipped: int = 0  # files that could not be read (evaluation folders)


@dataclass
class _Match:
    reason: str
    distance: int


@dataclass
class _Groups:
    labels: np.ndarray  # [N] component id per candidate row
    kept: np.ndarray  # [N] candidate index of the kept member of each row's component
    sizes: np.ndarray  # [N] component size per row
    exact: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=bool))


@dataclass(frozen=True)
class Fingerprints:
    """Hashes of a set of images: what dedupe compares. [N] columns, no Python object per image."""

    labels: pa.Array | pa.ChunkedArray  # string: uid, or a file path for evaluation images
    digests: np.ndarray  # int64: the same for the same pixel_sha256 within the set; -1: none
    phash: np.ndarray  # uint64, 0 where none
    dhash: np.ndarray  # uint64, 0 where none
    hashed: np.ndarray  # bool: has a pHash (only these are compared by pHash)
