"""Builders the tests share: what `inf590k shard` and `inf590k build` do on the command line
(the build stage, then the dataset side's card), as library calls."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from inf590k.build.bins import BinConfig, bin_catalog
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.stage import dedupe
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.build.pipeline import BuildConfig, BuildSummary, run_build
from inf590k.build.shard import ShardConfig, ShardSummary, shard
from inf590k.dataset.card import write_card
from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.imageio import ImagePolicy
from tests.images import encode, thermal_frame


def shard_dataset(config: ShardConfig) -> ShardSummary:
    """`inf590k shard`: the shards and index files, then the card."""
    summary = shard(config)
    write_card(config.out)
    return summary


def build_dataset(config: BuildConfig) -> BuildSummary:
    """`inf590k build`: the four stages, then the card."""
    summary = run_build(config)
    write_card(config.out)
    return summary


def make_frames(root: Path, count: int) -> None:
    root.mkdir(parents=True)
    for i in range(count):
        sub = root / f"cam{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"{i:05d}.png").write_bytes(encode(thermal_frame(48, 64, seed=i)))


ALPHA = [
    "hit-uav/normal_xml/JPEGImages/0_60_30_0_01609.jpg",
    "hit-uav/normal_xml/JPEGImages/1_90_40_0_04880.jpg",
    "hit-uav/normal_xml/JPEGImages/1_130_80_0_04043.jpg",
    "sirst-v2/mixed/iraytek-54.png",
    "sirst-v2/mixed/S20210527_S7_74.png",
    "sirst-v2/mixed/211_HD_1.png",
    "sirst/images/Misc_120.png",
]


BETA = ["roadscene/cropinfrared/FLIR_04208.jpg", "roadscene/cropinfrared/FLIR_07583.jpg"]


def make_build(root: Path, ir_samples: Path) -> Path:
    """Ingest + dedupe + bin of a few real frames in two sources, two of them 16-bit, one copy."""
    alpha, beta, build = root / "alpha", root / "beta", root / "build"
    alpha.mkdir(parents=True)
    beta.mkdir()
    for rel in ALPHA:
        shutil.copy(ir_samples / rel, alpha / Path(rel).name)
    for rel in BETA:
        shutil.copy(ir_samples / rel, beta / Path(rel).name)
    for name in ("iraytek-54.png", "Misc_120.png"):  # raw-like 14-bit versions of real frames
        grey = cv2.imread(str(alpha / name), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(beta / f"deep_{name}"), grey.astype(np.uint16) * 40 + 7000)
        (alpha / name).unlink()
    shutil.copy(alpha / "0_60_30_0_01609.jpg", beta / "copy.jpg")  # removed by dedupe
    ingest(
        IngestConfig(sources=(("folder:alpha", alpha), ("folder:beta", beta)), build=build, policy=ImagePolicy(), execution=ExecutionOptions(workers=1, progress=False))
    )
    dedupe(DedupeConfig(build=build, contact_groups=0))
    bin_catalog(BinConfig(build=build))
    return build


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def tricky_tree(root: Path) -> None:
    """Names that sort across folder boundaries, links, a loop, an unreadable folder, a
    non-UTF-8 name, a flat folder and a deep one."""
    for rel in ("a", "a.txt", "a0", "a-", "b/x.png", "b.png", "b0/y.png", "z", "deep/1/2/3/4/f.png"):
        _touch(root / rel)
    for index in range(40):
        _touch(root / "flat" / f"{index:03d}.png", bytes(index))
    for index in range(7):
        _touch(root / "b" / "c" / f"{index}.png")
    os.symlink("..", root / "up")  # a link to a folder outside: a row, never followed
    os.symlink("b", root / "b-link")
    os.symlink("loop.png", root / "loop.png")
    os.symlink("missing.png", root / "b" / "dangling.png")
    (root / "closed").mkdir()
    _touch(root / "closed" / "hidden.png")
    (root / "closed").chmod(0)
    _touch(Path(os.fsdecode(os.path.join(os.fsencode(root), b"caf\xe9")) + "/f.png"))
