"""The weights' licence reaches timm through the README's own recipe and the export card's
snippet: `pretrained_cfg["license"]` is what config.json records, never the architecture's
"unknown"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

import pretrain  # noqa: F401  (registers the timm models)
from pretrain.models import create_model, export_encoder
from pretrain.models.export import export_cfg_overlay, loading_lines
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def readme_recipe() -> str:
    """The Python block of the README's "Using the encoder downstream" section."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("### Using the encoder downstream", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def run_snippet(code: str) -> dict:
    """Run a documented snippet with `images` given; its names afterwards."""
    names = {"images": torch.zeros(1, 1, 64, 64)}
    exec(compile(code, "<snippet>", "exec"), names)  # noqa: S102 (our own documentation)
    return names


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("licensed") / "dugi_mae_tiny"
    export_encoder(create_model("dugi_mae_tiny").eval(), folder, license="non-commercial")
    return folder


def test_the_readme_recipe_carries_the_licence(export):
    code = readme_recipe()
    assert 'pretrained_cfg_overlay=dict(file="export/dugi_mae_base/model.safetensors")' in code
    code = code.replace("dugi_mae_base", "dugi_mae_tiny").replace(
        "export/dugi_mae_tiny/model.safetensors", f"{export}/model.safetensors"
    )
    names = run_snippet(code)
    assert names["backbone"].pretrained_cfg["license"] == "non-commercial"
    assert names["backbone"].pretrained_cfg["input_size"] == (1, 64, 64)
    assert [f.shape[-1] for f in names["features"]] == [16, 8, 4, 2]


def test_the_overlay_wins_and_foreign_weights_stay_unknown(export, tmp_path):
    given = timm.create_model(
        "dugi_mae_tiny",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(export / "model.safetensors"), license="mine"),
    )
    assert given.pretrained_cfg["license"] == "mine"
    loose = tmp_path / "loose"  # the weights alone, without the export's config.json
    loose.mkdir()
    (loose / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes())
    plain = timm.create_model(
        "dugi_mae_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(loose / "model.safetensors"))
    )
    assert plain.pretrained_cfg["license"] == "unknown"
    (loose / "config.json").write_text("{not json")
    assert export_cfg_overlay(loose / "model.safetensors") == {}
    (loose / "config.json").write_text('{"pretrained_cfg": {"license": "x"}}')  # not ours
    assert export_cfg_overlay(loose / "model.safetensors") == {}


@pytest.mark.parametrize("architecture", ["dugi_mae_tiny", "vit_base_patch16_224"])
def test_the_export_card_snippet_loads_it(tmp_path, architecture):
    name = "dugi_mae_tiny" if architecture.startswith("dugi") else "mae_vit_tiny"
    folder = tmp_path / name
    export_encoder(create_model(name).eval(), folder, license="permissive-sources")
    lines = loading_lines(architecture, folder)
    assert lines[0] == "```python" and lines[-1] == "```"
    names = run_snippet("\n".join(lines[1:-1]))
    model = names.get("backbone") or names.get("encoder")
    assert model.pretrained_cfg["license"] == "permissive-sources"
