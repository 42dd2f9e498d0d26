"""Write tiny Inf-590K shards for tests, in the project's shard format (ARCHITECTURE.md, "The dataset folder").

Each sample is `{uid}.png` (1-channel, 8- or 16-bit), `{uid}.json` (a catalog row) and
`{uid}.cls` (decimal text); members are sorted with a fixed mtime; the dataset root holds
`_info.json` in timm's format with one sub-folder per resolution bin.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inf590k.dataset.serve import serve_folder  # noqa: F401  (re-exported for the tests)

FIXED_MTIME = 1_700_000_000


@dataclass(frozen=True)
class ShardSet:
    root: Path  # dataset folder (holds _info.json)
    shards: tuple[Path, ...]  # tar paths in _info.json order
    uids: tuple[tuple[str, ...], ...]  # uids per shard, in tar order

    @property
    def info_path(self) -> Path:
        return self.root / "_info.json"

    @property
    def num_samples(self) -> int:
        return sum(len(u) for u in self.uids)


def synthetic_ir(rng: np.random.Generator, height: int, width: int, bit16: bool) -> np.ndarray:
    """A thermal-looking frame: smooth background gradient, a few hot blobs, sensor noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    frame = 0.3 + 0.2 * (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sigma = rng.uniform(0.05, 0.2) * min(height, width)
        frame += rng.uniform(0.2, 0.5) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    frame += rng.normal(0, 0.01, frame.shape).astype(np.float32)
    frame = np.clip(frame, 0, 1)
    if bit16:  # raw-like 14-bit counts in a 16-bit container
        return (7000 + frame * 6000).astype(np.uint16)
    return (frame * 255).astype(np.uint8)


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(payload))


def write_shard(
    path: Path,
    samples: list[tuple[str, np.ndarray, int]],
    source_names: Sequence[str] | None = None,
) -> None:
    """Write one tar: per sample `{uid}.cls`, `{uid}.json`, `{uid}.png`, sorted by name; a
    sample's source is `source_names[class]` (default `synthetic<class>`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for uid, image, source_index in sorted(samples, key=lambda s: s[0]):
            ok, png = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            assert ok, "cv2.imencode failed"
            row = {
                "uid": uid,
                "source": (
                    source_names[source_index] if source_names else f"synthetic{source_index}"
                ),
                "width": int(image.shape[1]),
                "height": int(image.shape[0]),
                "orig_dtype": str(image.dtype),
                "modality": "synthetic",
            }
            _add_member(tar, f"{uid}.cls", str(source_index).encode())
            _add_member(tar, f"{uid}.json", json.dumps(row, sort_keys=True).encode())
            _add_member(tar, f"{uid}.png", png.tobytes())


def make_dataset(
    root: Path,
    *,
    num_shards: int = 4,
    per_shard: int = 8,
    height: int = 48,
    width: int = 60,
    bit16: bool = False,
    bin_name: str = "640x512",
    seed: int = 0,
) -> ShardSet:
    """Write `num_shards` tars of `per_shard` synthetic samples under `root/bin_name/` + _info.json."""
    rng = np.random.default_rng(seed)
    shards, uids = [], []
    for shard_index in range(num_shards):
        shard_uids = [f"s{shard_index:03d}_{i:04d}" for i in range(per_shard)]
        samples = [
            (uid, synthetic_ir(rng, height, width, bit16), shard_index % 3) for uid in shard_uids
        ]
        path = root / bin_name / f"shard-{shard_index:06d}.tar"
        write_shard(path, samples)
        shards.append(path)
        uids.append(tuple(sorted(shard_uids)))
    info = {
        "name": "inf590k-test",
        "splits": {
            "train": {
                "name": "train",
                "num_samples": num_shards * per_shard,
                "filenames": [str(p.relative_to(root)) for p in shards],
                "shard_lengths": [per_shard] * num_shards,
            }
        },
    }
    (root / "_info.json").write_text(json.dumps(info, indent=2))
    return ShardSet(root=root, shards=tuple(shards), uids=tuple(uids))


def corrupt_copy(source: Path, target: Path, keep_fraction: float = 0.4) -> Path:
    """A truncated copy of a tar, followed by garbage: what a broken download looks like."""
    data = source.read_bytes()
    cut = int(len(data) * keep_fraction)
    target.write_bytes(data[:cut] + b"\x8b" * 3000)
    return target


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_mixed_dataset(
    root: Path,
    shards: Sequence[tuple[str, Mapping[str, int]]],
    *,
    height: int = 16,
    width: int = 16,
    seed: int = 0,
) -> ShardSet:
    """A dataset whose shards mix sources and bins as given: `[("640x512", {"a": 50, "b": 10}),
    ...]` writes each shard under `root/<bin>/` with that many samples of each source (their
    .cls the source's class id, their .json naming it), and an _info.json listing the shards
    with their lengths and the sources with their counts."""
    rng = np.random.default_rng(seed)
    names = sorted({source for _, counts in shards for source in counts})
    class_ids = {source: i for i, source in enumerate(names)}
    paths, uids, totals = [], [], dict.fromkeys(names, 0)
    for index, (bin_name, counts) in enumerate(shards):
        samples = []
        for source, count in counts.items():
            for i in range(count):
                uid = f"{source}_{index:03d}_{i:04d}"
                samples.append((uid, synthetic_ir(rng, height, width, False), class_ids[source]))
            totals[source] += count
        path = root / bin_name / f"{bin_name}-{index:06d}.tar"
        write_shard(path, samples, source_names=names)
        paths.append(path)
        uids.append(tuple(sorted(uid for uid, _, _ in samples)))
    info = {
        "name": "inf590k-test",
        "splits": {
            "train": {
                "name": "train",
                "num_samples": sum(len(u) for u in uids),
                "filenames": [str(p.relative_to(root)) for p in paths],
                "shard_lengths": [len(u) for u in uids],
            }
        },
        "sources": [
            {"id": source, "class_id": class_ids[source], "name": source, "license": "CC-BY-4.0",
             "license_link": "", "modality": "lwir", "samples": totals[source]}
            for source in names
        ],  # fmt: skip
    }
    (root / "_info.json").write_text(json.dumps(info, indent=2))
    return ShardSet(root=root, shards=tuple(paths), uids=tuple(uids))
