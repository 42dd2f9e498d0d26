"""A `folder:` source's own name, licence and citation: from a small file at its root or the
command line, never silently "self-collected, user-provided"."""

from __future__ import annotations

import json

import pytest

from inf590k.build.ingest import IngestConfig, chosen_manifests
from inf590k.inputs.manifest import (
    FOLDER_LICENSE,
    ManifestError,
    builtin_manifests,
    manifest_for_source,
    read_folder_facts,
    renamed_folder_note,
    source_option,
    with_folder_facts,
)


def test_yaml_and_json_descriptions_are_read(tmp_path):
    (tmp_path / "inf590k-source.yaml").write_text(
        "name: VIFB\nlicense: CC-BY-4.0\ncitation: |\n  Zhang et al.\n  VIFB, CVPRW 2020.\n"
    )
    facts, filename = read_folder_facts(tmp_path)
    assert filename == "inf590k-source.yaml"
    assert facts == {"name": "VIFB", "license": "CC-BY-4.0", "citation": "Zhang et al.\nVIFB, CVPRW 2020."}
    other = tmp_path / "json"
    other.mkdir()
    (other / "inf590k-source.json").write_text(json.dumps({"license": "CC-BY-NC-4.0"}))
    assert read_folder_facts(other) == ({"license": "CC-BY-NC-4.0"}, "inf590k-source.json")
    assert read_folder_facts(tmp_path / "json" / "inf590k-source.json") == ({}, "")  # not a folder


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("licence: MIT\n", "'licence': is not a key"),
        ("name: [a, b]\n", "is not text"),
        ("- just a list\n", "must be a mapping"),
        ("name: 'unclosed\n", "not valid YAML or JSON"),
        ("name: |\n  two\n  lines\n", "spans several lines"),
    ],
)
def test_a_bad_description_is_one_line_naming_file_and_key(tmp_path, text, says):
    (tmp_path / "inf590k-source.yaml").write_text(text)
    with pytest.raises(ManifestError, match="inf590k-source.yaml") as caught:
        read_folder_facts(tmp_path)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_a_linked_description_is_refused(tmp_path):
    target = tmp_path / "elsewhere.yaml"
    target.write_text("license: MIT\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "inf590k-source.yaml").symlink_to(target)
    with pytest.raises(ManifestError, match="symbolic link"):
        read_folder_facts(folder)


def test_facts_replace_the_defaults_and_the_file_gets_its_reason():
    manifest = manifest_for_source("folder:vifb", builtin_manifests())
    assert manifest.license == FOLDER_LICENSE and manifest.folder_source
    described = with_folder_facts(manifest, {"name": "VIFB", "license": "CC-BY-4.0"}, "inf590k-source.yaml")
    assert (described.name, described.license, described.id) == ("VIFB", "CC-BY-4.0", "vifb")
    assert described.excluded_by("inf590k-source.yaml") == "folder source description (inf590k-source.yaml)"
    assert described.excluded_by("sub/inf590k-source.yaml") is None  # only the root's
    assert source_option("vifb", {"name": "VIFB", "folder_source": True}, "/d") == "folder:vifb=/d"
    assert source_option("llvip", {"name": "LLVIP"}, "/d") == "llvip=/d"
    assert source_option("cam", "Self-collected folder cam", "/d") == "folder:cam=/d"  # older builds


def test_a_renamed_folder_id_is_said():
    assert renamed_folder_note("folder:my-cam") == (
        "note: source folder:my-cam is named 'my_cam' (ids use _ where NAME has -: shard and "
        "file names join parts with -)"
    )
    assert renamed_folder_note("folder:my_cam") == "" and renamed_folder_note("llvip") == ""


def test_the_command_line_wins_over_the_file_and_is_checked(tmp_path):
    folder = tmp_path / "cam"
    folder.mkdir()
    (folder / "inf590k-source.yaml").write_text("name: Our camera\nlicense: CC-BY-4.0\n")

    def chosen(*facts, sources=(("folder:cam", folder),)):
        return chosen_manifests(IngestConfig(sources=sources, build=tmp_path / "b", source_facts=facts))

    [manifest] = chosen(("cam", "license", "CC-BY-NC-4.0"), ("cam", "citation", "Us, 2026."))
    assert (manifest.name, manifest.license, manifest.citation) == ("Our camera", "CC-BY-NC-4.0", "Us, 2026.")
    with pytest.raises(ValueError, match="no --source names 'other'"):
        chosen(("other", "license", "MIT"))
    llvip = tmp_path / "llvip"
    llvip.mkdir()
    with pytest.raises(ValueError, match="llvip is described by its manifest"):
        chosen(("llvip", "license", "MIT"), sources=(("llvip", llvip),))
    with pytest.raises(ValueError, match="the command line: key 'name'"):
        chosen(("cam", "name", "   "))
