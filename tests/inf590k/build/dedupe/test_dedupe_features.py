"""Optional feature-similarity dedupe: exact cosine pairs, and the stage wiring with a timm model.

A randomly initialised timm ResNet stands in for a trained encoder: it tests the mechanism
(loading a timm model folder, embedding stored pixels, joining groups), not encoder quality.
Global pooling makes its features flip-invariant while pHash is not, which the test uses.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from inf590k.build import catalog as cat
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.features import similar_pairs
from inf590k.build.dedupe.stage import dedupe
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.execution.units import ExecutionOptions

FRAMES = [
    "hit-uav/normal_xml/JPEGImages/0_60_30_0_01609.jpg",
    "roadscene/cropinfrared/FLIR_04208.jpg",
    "sirst-v2/mixed/iraytek-54.png",
    "sirst/images/Misc_120.png",
]


def test_similar_pairs_equal_brute_force():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(700, 16)).astype(np.float32)
    vectors[350:400] = vectors[:50] + rng.normal(scale=0.05, size=(50, 16))  # planted near copies
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    i, j, sims = similar_pairs(vectors, 0.9, chunk=128)
    full = vectors @ vectors.T
    want_i, want_j = np.nonzero(np.triu(full > 0.9, k=1))
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == sorted(
        zip(want_i.tolist(), want_j.tolist(), strict=True)
    )
    assert len(i) >= 50
    np.testing.assert_allclose(sims, full[i, j], rtol=1e-5)
    with pytest.raises(ValueError, match="--feature-threshold"):
        similar_pairs(vectors, 1.5)


@pytest.fixture
def encoder_dir(tmp_path) -> Path:
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", in_chans=1, num_classes=0)
    save_for_hf(model, tmp_path / "encoder", safe_serialization=True)
    return tmp_path / "encoder"


def test_flipped_copy_joins_only_with_features(tmp_path, ir_samples, encoder_dir):
    orig, copies = tmp_path / "orig", tmp_path / "copies"
    orig.mkdir()
    copies.mkdir()
    for rel in FRAMES:
        shutil.copy(ir_samples / rel, orig / Path(rel).name)
    flipped = cv2.flip(cv2.imread(str(orig / "iraytek-54.png"), cv2.IMREAD_GRAYSCALE), 1)
    cv2.imwrite(str(copies / "mirror.png"), flipped)
    build = tmp_path / "build"
    ingest(
        IngestConfig(sources=(("folder:orig", orig), ("folder:copies", copies)), build=build, execution=ExecutionOptions(workers=1, progress=False))
    )

    hashes_only = dedupe(DedupeConfig(build=build, contact_groups=0))
    assert hashes_only.groups == 0  # a mirror image has a distant pHash

    summary = dedupe(
        DedupeConfig(
            build=build,
            contact_groups=0,
            feature_model=encoder_dir,
            feature_threshold=0.9995,
            priority=("orig",),
        )
    )
    rows = {r["relpath"]: r for r in cat.read_catalog(build).to_pylist()}
    assert summary.groups == 1 and summary.kept == len(FRAMES)
    assert rows["mirror.png"]["status"] == "duplicate"
    assert rows["mirror.png"]["dup_group"] == rows["iraytek-54.png"]["dup_group"] >= 0
    assert rows["mirror.png"]["reason"].startswith(
        f"similar to {rows['iraytek-54.png']['uid']} (encoder features"
    )


def test_missing_model_folder_says_what_to_pass(tmp_path, ir_samples):
    (tmp_path / "src").mkdir()
    shutil.copy(ir_samples / FRAMES[0], tmp_path / "src" / "a.jpg")
    ingest(
        IngestConfig(sources=(("folder:src", tmp_path / "src"),), build=tmp_path / "b", execution=ExecutionOptions(workers=1, progress=False))
    )
    with pytest.raises(FileNotFoundError, match="inf590k export"):
        dedupe(
            DedupeConfig(build=tmp_path / "b", feature_model=tmp_path / "nothing", contact_groups=0)
        )


def test_collapsed_encoder_is_counted_apart_and_warned(tmp_path, ir_samples, encoder_dir):
    src = tmp_path / "src"
    src.mkdir()
    for rel in FRAMES:
        shutil.copy(ir_samples / rel, src / Path(rel).name)
    build = tmp_path / "build"
    ingest(IngestConfig(sources=(("folder:src", src),), build=build, execution=ExecutionOptions(workers=1, progress=False)))
    assert not dedupe(DedupeConfig(build=build, contact_groups=0)).groups
    summary = dedupe(
        DedupeConfig(build=build, contact_groups=0, feature_model=encoder_dir, feature_threshold=-1.0)
    )  # every pair is "similar": what an untrained or collapsed encoder gives
    assert summary.near_duplicates == 0 and summary.feature_duplicates == len(FRAMES) - 1
    assert f"0 near (pHash) + {len(FRAMES) - 1} by encoder features duplicates" in str(summary)
    assert "1 group," in str(summary)
    [warning] = summary.warnings
    assert "do not separate the images" in warning and "--feature-threshold" in warning
    assert warning in str(summary)
    strict = dedupe(
        DedupeConfig(build=build, contact_groups=0, feature_model=encoder_dir, feature_threshold=0.9999)
    )
    assert not strict.warnings
