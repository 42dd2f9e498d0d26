"""The demo's shard settings: a demo-sized build with a one-image extra source writes about one
shard per bin (before, the one-image bin set every shard's length: 130 shards for 252 images)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from cli.build import write_dataset_card
from cli.demo import DEMO_LAYOUTS, demo_shard_config
from inf590k.build.ingest import IngestConfig
from inf590k.build.pipeline import BuildConfig, run_build
from inf590k.dataset.verify import VerifyConfig, verify
from inf590k.execution.units import ExecutionOptions
from inf590k.synth import SynthConfig, synthesize


def demo_sources(root: Path, frames: int) -> list[tuple[str, Path]]:
    """The demo's synthetic sources, as `inf590k demo` makes them."""
    sources = []
    for index, (layout, scale) in enumerate(DEMO_LAYOUTS):
        count = frames * 10 if layout == "kaist" else frames
        target = root / layout
        synthesize(SynthConfig(layout=layout, out=target, count=count, seed=index, scale=scale))
        sources.append((layout, target))
    return sources


def test_demo_with_a_one_image_extra_source_writes_one_shard_per_bin(tmp_path, ir_samples):
    lone = tmp_path / "lone"
    lone.mkdir()
    texture = np.random.default_rng(3).integers(0, 255, (700, 1900), dtype=np.uint8)
    cv2.imwrite(str(lone / "wide.png"), cv2.GaussianBlur(texture, (9, 9), 3))  # a bin of its own
    sources = [
        *demo_sources(tmp_path / "sources", frames=8),
        ("hit_uav", ir_samples / "hit-uav"),
        ("folder:lone", lone),
    ]
    dataset = tmp_path / "dataset"
    built = run_build(
        BuildConfig(
            ingest=IngestConfig(
                sources=tuple(sources),
                build=tmp_path / "build",
                execution=ExecutionOptions(workers=1, progress=False),
            ),
            out=dataset,
            shard=demo_shard_config(tmp_path / "build", dataset),
        )
    )
    split = json.loads((dataset / "data" / "_info.json").read_text())["splits"]["train"]
    per_bin: dict[str, list[int]] = {}
    for name, length in zip(split["filenames"], split["shard_lengths"], strict=True):
        per_bin.setdefault(name.split("/")[0], []).append(length)
    assert [1] in per_bin.values()  # the lone image: one short shard of its own
    assert len(per_bin) >= 3 and split["num_samples"] > 60
    assert all(len(lengths) == 1 for lengths in per_bin.values()), per_bin  # one per bin
    assert built.shard.shards == len(per_bin) == len(built.bins.counts)
    write_dataset_card(dataset)  # as the demo does, before it verifies
    checked = verify(VerifyConfig(dataset=dataset, execution=ExecutionOptions(workers=1, progress=False)))
    assert checked.ok, checked.problems
