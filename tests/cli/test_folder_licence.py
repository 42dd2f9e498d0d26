"""A folder source's licence, from its description file, reaches the dataset card, LICENSES.md
and the exported weights' timm `pretrained_cfg` through the export README's own snippet."""

from __future__ import annotations

import json
import re

import pytest
import torch
from click.testing import CliRunner

from cli import main


def invoke(*args: object):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_a_folder_sources_licence_reaches_the_card_and_the_weights(tmp_path, torch_single_thread):
    from pretrain.checkpoint import export_checkpoint
    from pretrain.config import config_from_options
    from pretrain.train import pretrain

    folder = tmp_path / "vifb"
    invoke("synth", "--layout", "sirst", "--out", folder, "--count", 24, "--scale", 0.5)
    (folder / "INF590K_SYNTHETIC.json").unlink()  # stands for a real public folder here
    (folder / "inf590k-source.yaml").write_text(
        "name: VIFB benchmark\nlicense: CC-BY-NC-4.0\ncitation: Zhang et al., CVPRW 2020.\n"
    )
    built = invoke(
        "build", "--build", tmp_path / "b", "--out", tmp_path / "ds", "--workers", 1,
        "--source", f"folder:my-vifb={folder}",
    )
    assert "note: source folder:my-vifb is named 'my_vifb'" in built.output
    card = (tmp_path / "ds" / "README.md").read_text()
    licences = (tmp_path / "ds" / "metadata" / "LICENSES.md").read_text()
    assert "| my_vifb | VIFB benchmark | public | CC-BY-NC-4.0 |" in licences
    assert "| my_vifb | 0 | VIFB benchmark | public |" in card and "Zhang et al., CVPRW 2020." in card
    assert "Self-collected" not in card and "user-provided" not in card + licences

    run = pretrain(
        config_from_options(
            dict(
                shards=[str(tmp_path / "ds")], model="dugi_mae_tiny", out=str(tmp_path / "run"),
                steps=1, batch_size=4, workers=0, shuffle_buffer=8, shuffle_initial=4,
                progress=False, device="cpu",
            )
        )
    )
    export = export_checkpoint(run.checkpoint, tmp_path / "export")
    readme = (export / "README.md").read_text()
    snippet = re.search(r"## Load it with timm\n\n```python\n(.*?)```", readme, flags=re.S).group(1)
    names = {"images": torch.zeros(1, 1, 64, 64)}
    exec(compile(snippet, "export README", "exec"), names)  # noqa: S102 (our own card)
    assert names["backbone"].pretrained_cfg["license"] == "non-commercial"
    assert "license_name: non-commercial" in readme and "VIFB benchmark: CC-BY-NC-4.0" in readme


def test_source_options_name_a_folder_source_as_its_source_option_does(tmp_path):
    """--source-license my-cam=... (as typed in folder:my-cam) or folder:my-cam=... describe the
    source my_cam; one source given twice for the same key is refused."""
    from PIL import Image

    folder = tmp_path / "cam"
    folder.mkdir()
    Image.new("L", (64, 48), 90).save(folder / "frame.png")
    common = ["ingest", "--source", f"folder:my-cam={folder}", "--workers", 1]
    invoke(*common, "--build", tmp_path / "b", "--source-license", "my-cam=MIT",
           "--source-name", "folder:my-cam=Our camera")
    recorded = json.loads((tmp_path / "b" / "sources.json").read_text())["my_cam"]
    assert (recorded["name"], recorded["license"]) == ("Our camera", "MIT")
    twice = CliRunner().invoke(
        main, [str(a) for a in (*common, "--build", tmp_path / "b2", "--source-license",
                                "my-cam=MIT", "--source-license", "my_cam=GPL-3.0")]
    )
    assert twice.exit_code == 2 and "--source-license names my_cam twice" in twice.output


def test_a_folder_source_without_a_licence_is_told_how_to_give_one(tmp_path):
    from PIL import Image

    folder = tmp_path / "cam"
    folder.mkdir()
    Image.new("L", (64, 48), 90).save(folder / "frame.png")
    bare = invoke("ingest", "--source", f"folder:cam={folder}", "--build", tmp_path / "b", "--workers", 1)
    assert (
        "note: folder source cam states no licence (cards and weights say 'user-provided'): put "
        "inf590k-source.yaml at its root or give --source-license cam=SPDX-ID" in bare.output
    )
    given = invoke("ingest", "--source", f"folder:cam={folder}", "--build", tmp_path / "b",
                   "--workers", 1, "--source-license", "cam=CC-BY-4.0")
    assert "states no licence" not in given.output
