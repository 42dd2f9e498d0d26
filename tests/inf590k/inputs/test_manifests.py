"""The shipped manifests: they load, they are complete, and they sort real layouts correctly."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from inf590k.execution.units import ExecutionOptions
from inf590k.inputs.manifest import (
    MANIFEST_DIR,
    Manifest,
    ManifestError,
    builtin_manifests,
    load_manifest_file,
    manifest_from_dict,
)

# The sources every Inf-590K-style build is expected to know (SOURCES.md).
REQUIRED_IDS = {
    "flir_adas_v2", "flir_adas_v1", "llvip", "kaist", "m3fd", "msrs", "roadscene", "tno",
    "sirst", "sirst_v2", "nudt_sirst", "irstd1k", "hit_uav", "dronevehicle", "anti_uav410",
    "anti_uav300", "vedai", "vtuav", "lsotb_tir", "birdsai", "scut_fir", "inf30",
}
VIDEO_SOURCES = {"kaist", "anti_uav410", "anti_uav300", "vtuav", "lsotb_tir", "birdsai", "scut_fir"}


def decision(manifest: Manifest, relpath: str) -> str:
    """What ingest does with a file: 'included', 'excluded: <rule>' or 'not listed'."""
    rule = manifest.excluded_by(relpath)
    if rule is not None:
        return f"excluded: {rule}"
    return "included" if manifest.included(relpath) else "not listed"


def decisions(manifest: Manifest, root: Path) -> Counter:
    return Counter(
        decision(manifest, path.relative_to(root).as_posix())
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "README.txt"  # the sample's own description
    )


@pytest.fixture(scope="module")
def manifests() -> dict[str, Manifest]:
    return builtin_manifests()


def test_every_shipped_manifest_loads_and_ids_are_unique() -> None:
    files = sorted(MANIFEST_DIR.glob("*.yaml"))
    loaded = [load_manifest_file(path) for path in files]
    ids = [m.id for m in loaded]
    assert len(ids) == len(set(ids)), f"duplicate ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert len(loaded) >= 22
    assert REQUIRED_IDS <= set(ids), f"missing: {sorted(REQUIRED_IDS - set(ids))}"
    for path, manifest in zip(files, loaded, strict=True):
        assert path.stem == manifest.id, f"{path.name} holds id {manifest.id!r}"


def test_manifests_carry_the_facts_a_user_needs(manifests: dict[str, Manifest]) -> None:
    for source_id in REQUIRED_IDS:
        m = manifests[source_id]
        assert m.homepage.startswith("https://"), source_id
        assert m.citation and m.notes and m.license, source_id
        assert m.include and all(pattern.strip() for pattern in m.include), source_id
        assert all(rule.rule and rule.glob for rule in m.exclude), source_id
        if m.paired_with_visible:
            assert any("visible" in rule.rule for rule in m.exclude), f"{source_id}: RGB half kept"


def test_video_sources_subsample_and_special_sources_are_tagged(manifests) -> None:
    for source_id in VIDEO_SOURCES:
        assert manifests[source_id].video_stride > 1, source_id
        assert "video" in manifests[source_id].tags, source_id
    assert manifests["kaist"].in_sequence("images/set03/V001/lwir/I00042.jpg")
    assert not manifests["kaist"].in_sequence("images/set03/V001/visible/I00042.jpg")
    assert manifests["vedai"].modality == "nir" and "nir" in manifests["vedai"].tags
    assert "synthetic-targets" in manifests["nudt_sirst"].tags
    for small in ("sirst", "sirst_v2", "nudt_sirst", "irstd1k"):
        assert "small-target" in manifests[small].tags, small
    border = manifests["dronevehicle"].border
    assert border is not None and border.width == 100 and border.value == 255


@pytest.mark.parametrize(
    ("source_id", "relpath", "expected"),
    [
        ("flir_adas_v2", "images_thermal_train/data/video-1-frame-000001.jpg", "included"),
        ("flir_adas_v2", "FLIR_ADAS_v2/images_thermal_val/data/x.jpg", "included"),
        ("flir_adas_v2", "images_rgb_train/data/video-1-frame-000001.jpg", "excluded: visible half (images_rgb_*)"),
        ("flir_adas_v2", "video_rgb_test/data/x.jpg", "excluded: visible half (video_rgb_test)"),
        ("flir_adas_v2", "images_thermal_train/coco.json", "excluded: annotation file (*.json)"),
        ("flir_adas_v1", "train/thermal_8_bit/FLIR_00001.jpeg", "included"),
        ("flir_adas_v1", "train/thermal_16_bit/FLIR_00001.tiff",
         "excluded: 16-bit copy of the thermal_8_bit frames (thermal_16_bit)"),
        ("flir_adas_v1", "train/Annotated_thermal_8_bit/FLIR_00001.jpg",
         "excluded: boxes burned into the pixels (Annotated_thermal_8_bit)"),
        ("flir_adas_v1", "train/RGB/FLIR_00001.jpg", "excluded: visible half (RGB)"),
        ("llvip", "LLVIP/infrared/train/010001.jpg", "included"),
        ("llvip", "LLVIP/visible/train/010001.jpg", "excluded: visible half (visible)"),
        ("llvip", "LLVIP/Annotations/010001.xml", "excluded: annotation folder (Annotations)"),
        ("kaist", "images/set00/V000/lwir/I00000.jpg", "included"),
        ("kaist", "images/set00/V000/visible/I00000.jpg", "excluded: visible half (visible)"),
        ("m3fd", "M3FD_Detection/ir/00001.png", "included"),  # case differs between copies
        ("m3fd", "M3FD_Detection/Vis/00001.png", "excluded: visible half (Vis)"),
        ("msrs", "train/ir/00001D.png", "included"),
        ("msrs", "train/vi/00001D.png", "excluded: visible half (vi)"),
        ("msrs", "train/Segmentation_labels/00001D.png",
         "excluded: segmentation label folder (Segmentation_labels)"),
        ("tno", "Athena_images/soldier_in_trench_1/IR_meting012-1200_g.bmp", "included"),
        ("tno", "Athena_images/soldier_in_trench_1/VIS_meting012-1200_r.bmp",
         "excluded: visible band file (VIS*)"),
        ("tno", "Triclobs_images/Kayak/NIR.tif", "excluded: near-infrared band file (NIR*)"),
        ("nudt_sirst", "NUDT-SIRST/images/000001.png", "included"),
        ("nudt_sirst", "NUDT-SIRST/masks/000001.png", "excluded: mask folder (masks)"),
        ("irstd1k", "IRSTD-1k/IRSTD1k_Img/XDU0.png", "included"),
        ("irstd1k", "IRSTD-1k/IRSTD1k_Label/XDU0.png", "excluded: mask folder (IRSTD1k_Label)"),
        ("hit_uav", "normal_json/train/0_60_30_0_01609.jpg", "included"),
        ("hit_uav", "rotate_json/train/0_60_30_0_01609.jpg",
         "excluded: duplicate copy of the images (rotate_json)"),
        ("hit_uav", "rotate_xml/JPEGImages/0_60_30_0_01609.jpg",
         "excluded: duplicate copy of the images (rotate_xml)"),
        ("dronevehicle", "train/trainimgr/00001.jpg", "included"),
        ("dronevehicle", "val/valimgr/00001.jpg", "included"),
        ("dronevehicle", "train/trainimg/00001.jpg", "excluded: visible half (trainimg, valimg, testimg)"),
        ("dronevehicle", "test/testlabelr/00001.xml",
         "excluded: label folder (trainlabel, trainlabelr, ...)"),
        ("anti_uav410", "train/02_6319_0000-1499/000001.jpg", "included"),
        ("anti_uav410", "train/02_6319_0000-1499/IR_label.json", "excluded: annotation file (*.json)"),
        ("anti_uav300", "test/20190925_111757_1_1/IR.mp4", "included"),
        ("anti_uav300", "test/20190925_111757_1_1/infrared.mp4", "included"),
        ("anti_uav300", "test/20190925_111757_1_1/RGB.mp4", "excluded: visible video (RGB.mp4)"),
        ("vedai", "Vehicules1024/00000000_ir.png", "included"),
        ("vedai", "Vehicules512/00000000_co.png", "excluded: visible half (*_co)"),
        ("vtuav", "train_ST/animal_001/ir/000001.jpg", "included"),
        ("vtuav", "train_ST/animal_001/rgb/000001.jpg", "excluded: visible half (rgb)"),
        ("lsotb_tir", "seq/airplane_H_001/img/0001.jpg", "included"),
        ("birdsai", "TrainReal/images/0000000000_0000000000/frame_0001.jpg", "included"),
        ("birdsai", "TrainReal/annotations/0000000000_0000000000.csv", "excluded: label folder"),
        ("scut_fir", "videos/set00/V000.seq", "included"),
        ("scut_fir", "annotations/set00/V000.vbb", "excluded: annotation file (*.vbb)"),
        ("inf30", "Inf30/dataset_a/scene_1/0001.png", "included"),
        ("inf30", "Inf30/dataset_a/visible/0001.png", "excluded: visible image folder"),
    ],
)
def test_layout_decisions(manifests, source_id: str, relpath: str, expected: str) -> None:
    assert decision(manifests[source_id], relpath) == expected


def test_roadscene_infrared_folder_is_not_taken_for_cropinfrared(manifests) -> None:
    road = manifests["roadscene"]
    assert decision(road, "cropinfrared/FLIR_00006.jpg") == "included"
    assert decision(road, "infrared/FLIR_00006.png").startswith("excluded: un-cropped original")


# Real files in their original layouts: every file gets the expected decision.
REAL_SAMPLE_DECISIONS = {
    "sirst": ("sirst", {"included": 100, "excluded: mask folder (masks)": 24}),
    "sirst-v2": ("sirst_v2", {"included": 25, "excluded: annotation folder (annotations)": 24}),
    "roadscene": (
        "roadscene",
        {
            "included": 100,
            "excluded: visible half (crop_HR_visible)": 5,
            "excluded: visible half (crop_LR_visible)": 5,
            "excluded: un-cropped original of a cropinfrared frame (infrared)": 5,
        },
    ),
    "hit-uav": ("hit_uav", {"included": 60, "excluded: annotation folder (Annotations)": 15}),
}


@pytest.mark.parametrize("sample", sorted(REAL_SAMPLE_DECISIONS))
def test_real_sample_layouts(ir_samples: Path, manifests, sample: str) -> None:
    source_id, expected = REAL_SAMPLE_DECISIONS[sample]
    root = ir_samples / sample
    if not root.is_dir():
        pytest.skip(f"sample folder {sample} not present")
    assert decisions(manifests[source_id], root) == Counter(expected)


def test_real_sirst_masks_and_xml_are_both_excluded(ir_samples: Path, manifests) -> None:
    masks = sorted((ir_samples / "sirst" / "masks").glob("*"))
    assert {p.suffix for p in masks} == {".png", ".xml"}
    for path in masks:
        assert manifests["sirst"].excluded_by(f"masks/{path.name}") == "mask folder (masks)"


# --------------------------------------------------------------------------- bad manifests


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = {"id": "my_source", "name": "My source", "include": ["**/*.png"]}


def test_a_minimal_user_manifest_loads(tmp_path: Path) -> None:
    manifest = load_manifest_file(write(tmp_path, yaml.safe_dump(GOOD), "mine.yaml"))
    assert manifest.id == "my_source" and manifest.included("a/b.PNG")
    assert manifest.path.endswith("mine.yaml")


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"id": None}, "id"),
        ({"id": "Bad Id"}, "id"),
        ({"name": ""}, "name"),
        ({"modality": "thermal"}, "modality"),
        ({"exclude": [{"rule": "visible"}]}, "exclude"),
        ({"exclude": ["**/visible/**"]}, "exclude"),
        ({"exclude": {"rule": "x", "glob": "y"}}, "exclude"),
        ({"include": []}, "include"),
        ({"include": [1, 2]}, "include"),
        ({"video_stride": 0}, "video_stride"),
        ({"expected_count": -3}, "expected_count"),
        ({"channel_policy": "colour"}, "channel_policy"),
        ({"border": {"width": "wide"}}, "border"),
        ({"include_globs": ["**/*.png"]}, "include_globs"),  # unknown key (a typo)
    ],
)
def test_malformed_manifest_names_file_and_key(tmp_path: Path, change: dict, key: str) -> None:
    data = {**GOOD, **change}
    data = {k: v for k, v in data.items() if v is not None}
    path = write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(ManifestError) as error:
        load_manifest_file(path)
    message = str(error.value)
    assert str(path) in message and f"'{key}'" in message and "Fix" in message


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "id: x\nname: [unclosed\ninclude: ['**/*.png'\n")
    with pytest.raises(ManifestError, match="not valid YAML") as error:
        load_manifest_file(path)
    assert str(path) in str(error.value)


def test_a_manifest_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="mapping"):
        load_manifest_file(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ManifestError, match="mapping"):
        manifest_from_dict("id: x", "inline")


def test_duplicate_ids_in_a_manifest_folder_are_refused(tmp_path: Path) -> None:
    write(tmp_path, yaml.safe_dump(GOOD), "a.yaml")
    write(tmp_path, yaml.safe_dump(GOOD), "b.yaml")
    with pytest.raises(ManifestError, match="used twice") as error:
        builtin_manifests(tmp_path)
    assert "b.yaml" in str(error.value) and "'id'" in str(error.value)


def test_tno_keeps_the_ir_folder_of_the_common_copy_and_warns_on_zero_kept(tmp_path):
    from inf590k.build.ingest import IngestConfig, ingest
    from inf590k.synth import SynthConfig, synthesize

    synthesize(SynthConfig(layout="tno", out=tmp_path / "tno", count=5, scale=0.1))
    summary = ingest(
        IngestConfig(sources=(("tno", tmp_path / "tno"),), build=tmp_path / "b", execution=ExecutionOptions(workers=1, progress=False))
    )
    assert summary.sources[0].ok == 5 and not summary.warnings
    # the same frames under names no glob of the sirst manifest matches: 0 kept, and a warning
    summary = ingest(
        IngestConfig(sources=(("sirst", tmp_path / "tno"),), build=tmp_path / "c", execution=ExecutionOptions(workers=1, progress=False))
    )
    assert summary.sources[0].ok == 0
    assert summary.warnings == [
        f"warning: source sirst kept 0 of {summary.sources[0].found} files in {tmp_path / 'tno'}: "
        "compare its layout with `inf590k sources show sirst` (or use --manifest FILE)"
    ]
    assert summary.warnings[0] in str(summary)


def test_sources_list_marks_cut_cells_with_an_ellipsis():
    from click.testing import CliRunner

    from cli import main

    output = CliRunner().invoke(main, ["sources", "list"]).output
    birdsai = next(line for line in output.splitlines() if line.startswith("birdsai"))
    assert "BIRDSAI: Benchmarking IR Dataset for Surv…" in birdsai


@pytest.mark.parametrize("glob", ["**/[z-a].png", "**/{ir,thermal/*.png"])
def test_a_bad_glob_is_a_manifest_error_with_file_key_and_fix(tmp_path, glob):
    from inf590k.inputs.manifest import ManifestError, load_manifest_file

    path = tmp_path / "mine.yaml"
    path.write_text(f'id: mine\nname: Mine\ninclude: ["{glob}"]\n')
    with pytest.raises(ManifestError, match=r"mine\.yaml: key 'include': glob .* is not valid .*Fix: "):
        load_manifest_file(path)
    path.write_text(f'id: mine\nname: Mine\nexclude: [{{rule: x, glob: "{glob}"}}]\n')
    with pytest.raises(ManifestError, match="key 'exclude'"):
        load_manifest_file(path)


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path):
    from inf590k.inputs.manifest import ManifestError, load_manifest_file

    path = tmp_path / "broken.yaml"
    path.write_text("id: mine\nname: Mine\ninclude: [\"**/*.png\"\nexclude: []\n")
    with pytest.raises(ManifestError) as caught:
        load_manifest_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid YAML at line ") and "unicode string" not in message
    assert "\n" not in message


def test_folder_names_accept_hyphens_and_a_manifest_id_gets_a_suggestion():
    from inf590k.inputs.manifest import ManifestError, manifest_for_source, resolve_manifests

    manifests = resolve_manifests()
    assert manifest_for_source("folder:my-cam", manifests).id == "my_cam"
    with pytest.raises(ManifestError, match="use `--source llvip=PATH`.*folder:llvip_own=PATH"):
        manifest_for_source("folder:llvip", manifests)
