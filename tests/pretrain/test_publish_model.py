"""`inf590k publish-model`: the staged model repo loads through timm, the card parses, and
offline, unreachable or unauthorised runs fail fast in one line. Nothing reaches the Hub."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
import timm
import torch

import pretrain  # noqa: F401  (registers the DuGI-MAE encoders with timm)
from pretrain.checkpoint import model_card as export_card
from pretrain.hub import ModelPublishConfig, PublishError, count_parameters, publish_model
from pretrain.models import create_model, export_encoder
from pretrain.models.masking import mask_from_visible
from tests.hubkit import GOOD_TOKEN
from tests.shardkit import closed_port


def make_export(folder: Path, name: str) -> tuple[torch.nn.Module, Path]:
    """What `inf590k export` writes: weights, timm config and its short card."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    export_encoder(model, folder)
    checkpoint = {
        "model_name": name,
        "step": 5,
        "world_size": 1,
        "counters": {"images": 80},
        "config": {
            "data": {"shards": ["/local/only/shard-000000.tar"], "batch_size": 16},
            "optim": {
                "accum_steps": 1,
                "beta1": 0.9,
                "beta2": 0.95,
                "weight_decay": 0.05,
                "blr": 1.5e-4,
            },
        },
        "model_config": {"name": name},
    }
    (folder / "README.md").write_text(export_card(checkpoint, "model.safetensors"))
    return model, folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    return make_export(tmp_path_factory.mktemp("export") / "dugi_mae_tiny", "dugi_mae_tiny")


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_staged_hierarchical_encoder_loads_with_timm(exported, tmp_path):
    model, export = exported
    stage = tmp_path / "hub"
    summary = publish_model(
        ModelPublishConfig(
            export_dir=export, repo="lab/dugi-tiny", dataset_repo="lab/inf590k", dry_run=stage
        )
    )
    assert {p.name for p in stage.iterdir()} == {"README.md", "config.json", "model.safetensors"}
    assert summary.parameters == sum(p.numel() for p in model.encoder.parameters()) > 0
    assert str(summary).startswith("publish-model (dry run): dugi_mae_tiny encoder")
    # `local-dir:` reads config.json exactly as `hf-hub:` does after download
    backbone = timm.create_model(f"local-dir:{stage}", pretrained=True, features_only=True).eval()
    images = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        maps = backbone(images)
        plain = timm.create_model(f"local-dir:{stage}", pretrained=True).eval()
        torch.testing.assert_close(
            plain.forward_features(images), model.encoder.forward_features(images)
        )
    assert [m.shape[1] for m in maps] == [32, 48, 64, 64]


def test_staged_vit_encoder_loads_into_timm_vision_transformer(tmp_path):
    model, export = make_export(tmp_path / "vit", "mae_vit_tiny")
    stage = tmp_path / "hub"
    publish_model(ModelPublishConfig(export_dir=export, repo="lab/mae-vit-tiny", dry_run=stage))
    encoder = timm.create_model(f"local-dir:{stage}", pretrained=True).eval()
    assert type(encoder).__name__ == "VisionTransformer"
    images = torch.randn(1, 1, 64, 64)
    all_visible = mask_from_visible(torch.arange(16).expand(1, -1), 16)
    with torch.no_grad():  # timm's tokens after the class token = our encoder's tokens
        torch.testing.assert_close(
            encoder.forward_features(images)[:, 1:], model.encoder(images, all_visible)[:, 1:]
        )  # [N, L, D]
    card = (stage / "README.md").read_text()
    assert 'timm.create_model("hf-hub:lab/mae-vit-tiny", pretrained=True)' in card
    assert "import pretrain" not in card  # a plain ViT needs only timm
    assert "Not recorded" in card  # no --dataset-repo given


def test_model_card_parses_and_holds_architecture_data_recipe(exported, tmp_path):
    """ModelCard.validate() posts to the Hub; offline, the YAML goes through huggingface_hub's
    own parser and ModelCardData."""
    from huggingface_hub import ModelCard

    _, export = exported
    stage = tmp_path / "hub"
    publish_model(
        ModelPublishConfig(
            export_dir=export, repo="lab/dugi-tiny", dataset_repo="lab/inf590k", dry_run=stage
        )
    )
    card = ModelCard.load(stage / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "timm" and data["license"] == "unknown"  # none recorded
    assert data["datasets"] == ["lab/inf590k"]
    assert data["pipeline_tag"] == "image-feature-extraction"
    assert {"infrared", "thermal"} <= set(data["tags"])
    text = card.text
    for needle in (
        "`dugi_mae_tiny`",
        "embedding dims [32, 48, 64]",
        "(https://huggingface.co/datasets/lab/inf590k)",
        "masking: entropy, mask ratio 0.75",
        "dual-domain guidance (DDG): True",
        "- steps: 5",
        "weight decay 0.05",
        'timm.create_model("hf-hub:lab/dugi-tiny", pretrained=True, features_only=True)',
        "import pretrain",
        "AAAI 2026",
    ):
        assert needle in text, needle
    assert "/local/only" not in card.content  # the export's local shard paths stay private
    config = json.loads((stage / "config.json").read_text())
    assert config["architecture"] == "dugi_mae_tiny"
    assert count_parameters(stage / "model.safetensors") == count_parameters(
        export / "model.safetensors"
    )


def test_hub_card_carries_the_licence_the_export_derived(tmp_path):
    """Weights trained on non-commercial sources are published as non-commercial."""
    from huggingface_hub import ModelCard

    _, export = make_export(tmp_path / "nc", "dugi_mae_tiny")
    config = json.loads((export / "config.json").read_text())
    config["pretraining_data"] = {
        "license": {
            "id": "other",
            "name": "non-commercial",
            "summary": "Non-commercial use only: trained on SIRST (CC BY-NC-SA).",
        },
        "data": {"name": "lab/inf590k", "samples": 32, "sources": [{"name": "SIRST"}]},
    }
    (export / "config.json").write_text(json.dumps(config))
    stage = tmp_path / "hub"
    publish_model(ModelPublishConfig(export_dir=export, repo="lab/nc", dry_run=stage))
    card = ModelCard.load(stage / "README.md")
    data = card.data.to_dict()
    assert data["license"] == "other" and data["license_name"] == "non-commercial"
    assert "Non-commercial use only" in card.text and "apache" not in card.content
    assert "Trained on lab/inf590k, 32 samples; sources: SIRST." in card.text


def test_bad_input_is_one_clear_line(exported, tmp_path):
    _, export = exported
    with pytest.raises(PublishError, match="inf590k export"):
        publish_model(ModelPublishConfig(export_dir=tmp_path, repo="lab/x", dry_run=tmp_path / "a"))
    with pytest.raises(PublishError, match="--repo 'nobody': write OWNER/NAME"):
        publish_model(ModelPublishConfig(export_dir=export, repo="nobody", dry_run=tmp_path / "b"))
    with pytest.raises(PublishError, match="--dataset-repo"):
        publish_model(
            ModelPublishConfig(
                export_dir=export, repo="lab/x", dataset_repo="a/b/c", dry_run=tmp_path / "c"
            )
        )
    with pytest.raises(PublishError, match="overlaps the export"):
        publish_model(ModelPublishConfig(export_dir=export, repo="lab/x", dry_run=export))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(PublishError, match="not JSON"):
        publish_model(ModelPublishConfig(export_dir=broken, repo="lab/x", dry_run=tmp_path / "d"))


def test_offline_and_unreachable_fail_fast_and_keep_the_stage(
    exported, tmp_path, hub_env, monkeypatch, capsys
):
    _, export = exported
    stage = tmp_path / "hub"
    publish_model(ModelPublishConfig(export_dir=export, repo="lab/x", dry_run=stage))
    before = digests(stage)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(PublishError, match="HF_HUB_OFFLINE is set") as error:
        publish_model(ModelPublishConfig(export_dir=export, repo="lab/x", stage=stage))
    assert time.perf_counter() - started < 10 and "\n" not in str(error.value)
    assert digests(stage) == before

    monkeypatch.delenv("HF_HUB_OFFLINE")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    started = time.perf_counter()
    with pytest.raises(PublishError) as error:
        publish_model(
            ModelPublishConfig(export_dir=export, repo="lab/x", stage=stage, endpoint=endpoint)
        )
    assert time.perf_counter() - started < 10
    message = str(error.value)
    assert f"cannot reach {endpoint}" in message and str(stage) in message and "\n" not in message
    assert GOOD_TOKEN not in message + "".join(capsys.readouterr())
    assert digests(stage) == before


def test_upload_creates_a_model_repo_and_uploads_the_three_files(
    exported, tmp_path, hub_env, fake_hub, monkeypatch
):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    _, export = exported
    calls = []

    def create_repo(api, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"{fake_hub}/{repo_id}", endpoint=fake_hub)

    def upload_folder(api, **kwargs):
        calls.append(("upload_folder", kwargs["repo_id"], kwargs))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    stage = tmp_path / "hub"
    summary = publish_model(
        ModelPublishConfig(
            export_dir=export, repo="lab/dugi", private=True, stage=stage, endpoint=fake_hub
        )
    )
    (_, repo, created), (_, uploaded_to, upload) = calls
    assert repo == uploaded_to == "lab/dugi"
    assert created["repo_type"] == "model" and created["private"] is True and created["exist_ok"]
    assert upload["repo_type"] == "model" and Path(upload["folder_path"]) == stage
    assert sorted(upload["allow_patterns"]) == ["README.md", "config.json", "model.safetensors"]
    assert upload["commit_message"].startswith("Upload dugi_mae_tiny encoder weights")
    assert summary.url == f"{fake_hub}/lab/dugi" and "\n" not in str(summary)

    monkeypatch.setenv("HF_TOKEN", "hf_not_this_one")
    calls.clear()
    with pytest.raises(PublishError, match="HTTP 401, the token was rejected"):
        publish_model(
            ModelPublishConfig(export_dir=export, repo="lab/dugi", stage=stage, endpoint=fake_hub)
        )
    assert calls == []  # nothing created or uploaded with a rejected token


def test_source_names_and_licences_reach_the_hub_card_as_text(tmp_path):
    """A folder source's name or licence holding HTML shows as text, not as markup."""
    _, export = make_export(tmp_path / "html", "dugi_mae_tiny")
    config = json.loads((export / "config.json").read_text())
    config["pretraining_data"] = {
        "license": {"id": "other", "name": "permissive-sources",
                    "summary": "Trained only on data under permissive licences (Cam: MIT <script>x</script>)."},
        "data": {"name": "lab/inf590k", "samples": 8, "sources": [{"name": "Cam <b>\nbold</b>"}]},
    }
    (export / "config.json").write_text(json.dumps(config))
    stage = tmp_path / "hub"
    publish_model(ModelPublishConfig(export_dir=export, repo="lab/html", dry_run=stage))
    text = (stage / "README.md").read_text()
    assert "<script>" not in text and "<b>" not in text
    assert "(Cam: MIT &lt;script&gt;x&lt;/script&gt;)." in text
    assert "sources: Cam &lt;b&gt; bold&lt;/b&gt;." in text
