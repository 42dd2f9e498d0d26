"""Help and messages a newcomer reads: every option explained, alike flags alike, each problem
said once, sizes shown."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from cli import main


def invoke(*args: object, catch: bool = False):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=catch)


def option_help(command: str, option: str) -> str:
    """The help text click shows for one option of a command, joined onto one line."""
    output = invoke(*command.split(), "--help").output
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(option))
    text = [lines[start].strip()[len(option) :]]
    for line in lines[start + 1 :]:
        if line.strip().startswith("-") or not line.startswith(" " * 10):
            break
        text.append(line.strip())
    return " ".join(" ".join(text).split())


def test_sources_show_explains_manifest():
    text = option_help("sources show", "--manifest")
    assert "manifest YAML" in text and "Repeatable" in text


def test_probe_threshold_says_what_it_thresholds():
    text = option_help("probe", "--threshold")
    assert "Target probability of a target pixel" not in text
    assert "probability is above this" in text


def test_top_level_groups_name_every_command():
    output = invoke("--help").output
    groups = output.split("Options:")[0]
    listed = set(re.findall(r"[a-z][a-z-]+", " ".join(
        line.split(":", 1)[1] for line in groups.splitlines() if line.strip().startswith(("Dataset:", "Model:", "Both:"))
    )))
    commands = set(main.list_commands(None))
    assert "demo" in listed and commands <= listed


def test_model_info_shows_the_size_and_defaults_to_the_training_size():
    tiny = invoke("model-info", "dugi_mae_tiny")
    assert tiny.exit_code == 0 and tiny.output.startswith("dugi_mae_tiny at 64x64x1")
    bigger = invoke("model-info", "dugi_mae_tiny", "--img-size", 128)
    assert bigger.exit_code == 0 and bigger.output.startswith("dugi_mae_tiny at 128x128x1")
    old_name = invoke("model-info", "dugi_mae_tiny", "--image-size", 96)
    assert old_name.output.startswith("dugi_mae_tiny at 96x96x1")
    assert invoke("model-info", "mae_vit_base").output.startswith("mae_vit_base at 224x224x1")
    bad = invoke("model-info", "dugi_mae_tiny", "--img-size", 0)
    assert bad.exit_code == 1 and "positive multiple of 16" in bad.output
    assert "64 for *_tiny" in option_help("model-info", "--img-size, --image-size")


def test_verify_says_each_problem_once(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "metadata").mkdir()
    (tmp_path / "data" / "_info.json").write_text("{bad")
    (tmp_path / "metadata" / "SHA256SUMS").write_text("")
    result = invoke("verify", tmp_path, catch=True)
    assert result.exit_code == 1
    assert result.output.count("index files unreadable") == 1
    assert result.output.strip().splitlines()[-1] == f"verify: 1 problem in {tmp_path} (listed above)"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from pretrain.models import create_model, export_encoder

    folder = tmp_path_factory.mktemp("publish") / "dugi_mae_tiny"
    export_encoder(create_model("dugi_mae_tiny").eval(), folder)
    return folder


@pytest.mark.parametrize(
    ("form", "noted"),
    [
        (["--dry-run", "--stage", "{stage}"], False),  # the flag, as `publish --dry-run`
        (["--dry-run", "{stage}"], True),  # the earlier form: read as --stage, with a note
        (["--dry-run={stage}"], True),
    ],
    ids=["flag", "legacy", "legacy-equals"],
)
def test_publish_model_dry_run_is_a_flag_like_publish(export, tmp_path, form, noted, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a dry run needs no network
    stage = tmp_path / "staged"
    args = [a.format(stage=stage) for a in form]
    result = invoke("publish-model", export, "--repo", "lab/x", *args, catch=True)
    assert result.exit_code == 0, result.output
    assert "(dry run)" in result.output and (stage / "README.md").is_file()
    assert ("`--dry-run DIR` is now `--dry-run --stage DIR`" in result.output) == noted


def test_publish_model_dry_run_alone_stages_beside_the_export(export, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = invoke("publish-model", export, "--repo", "lab/x", "--dry-run", catch=True)
    assert result.exit_code == 0, result.output
    assert (export.parent / f"{export.name}-hub" / "config.json").is_file()
    assert "--dry-run DIR" not in invoke("publish-model", "--help").output
