"""The dedupe contact sheet names each image: group and decision, source, file name."""

from __future__ import annotations

import json

import cv2
import numpy as np

from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.sheet import (
    CAPTION_LINE_PX,
    CAPTION_LINES,
    CAPTION_SCALE,
    fit_text,
    member_caption,
)
from inf590k.build.dedupe.stage import dedupe
from inf590k.build.ingest import IngestConfig, ingest
from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.imageio import ImagePolicy


def test_captions_name_source_and_file():
    kept = {"kept": True, "exact": False, "source": "vifb", "phash_distance_to_kept": 0}
    near = {"kept": False, "exact": False, "source": "roadscene", "phash_distance_to_kept": 6}
    exact = {"kept": False, "exact": True, "source": "tno", "phash_distance_to_kept": 0}
    assert member_caption(0, kept, "ir/scene_01.png", 112) == ("g0 kept", "vifb", "scene_01.png")
    assert member_caption(0, near, "crop_HR/FLIR_00211.jpg", 112) == (
        "g0 d=6",
        "roadscene",
        "FLIR_00211.jpg",
    )
    assert member_caption(3, exact, "a.bmp", 112)[0] == "g3 exact copy"


def test_long_names_are_cut_from_the_left_to_fit():
    name = "a_very_long_recording_name_2024-05-01_frame_000123.png"
    cut = fit_text(name, 112)
    assert cut.startswith("..") and name.endswith(cut[2:])  # the end tells files apart
    assert cv2.getTextSize(cut, cv2.FONT_HERSHEY_SIMPLEX, CAPTION_SCALE, 1)[0][0] <= 112
    assert fit_text("short.png", 112) == "short.png"
    assert fit_text("café.png", 112) == "caf?.png"  # OpenCV's fonts draw ASCII only


def test_the_sheet_has_room_for_three_caption_lines(tmp_path):
    rng = np.random.default_rng(0)
    frame = cv2.GaussianBlur(rng.integers(0, 255, (96, 128), dtype=np.uint8), (0, 0), 3)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / f"{folder}_frame.png"), frame)
    build = tmp_path / "build"
    ingest(
        IngestConfig(
            sources=(("folder:a", tmp_path / "a"), ("folder:b", tmp_path / "b")),
            build=build,
            policy=ImagePolicy(),
            execution=ExecutionOptions(workers=1, progress=False),
        )
    )
    dedupe(DedupeConfig(build=build))
    report = json.loads((build / "dedupe" / "report.json").read_text())
    assert len(report["groups"]) == 1
    sheet = cv2.imread(str(build / "dedupe" / "contact_sheet.png"), cv2.IMREAD_GRAYSCALE)
    assert sheet.shape == (112 + 6 + CAPTION_LINES * CAPTION_LINE_PX, 2 * (112 + 4))
    captions = sheet[112 + 2 :]
    for line in range(CAPTION_LINES):  # ink on each caption line under both images
        band = captions[line * CAPTION_LINE_PX : (line + 1) * CAPTION_LINE_PX]
        assert (band[:, :112] < 128).any() and (band[:, 116:] < 128).any()
