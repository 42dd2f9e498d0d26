
"""Released checkpoints through the commands: export, probe --encoder, dedupe, pretrain --init."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cli import main
from pretrain.models.reference import load_reference_checkpoint
from pretrain.models.released import read_reference_state
from tests.conftest import REPO_ROOT, shared_dir

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """The small InfMAE-architecture model saved the way the released .pth files are: the
    state under `model`, the run's arguments (heads included) under `args`."""
    source = shared_dir() / "reference" / "checkpoints" / "infmae_small"
    if not source.is_dir():
        pytest.skip(f"reference checkpoint facts not found at {source}")
    path = tmp_path_factory.mktemp("released") / "infmae_small.pth"
    args = argparse.Namespace(
        model="infmae_small", num_heads=4, decoder_num_heads=4, output_dir=Path("run")
    )
    state = load_file(source / "infmae_small_random.safetensors")
    torch.save({"model": state, "epoch": 1, "args": args}, path)
    return path


def invoke(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_export_of_a_released_checkpoint_loads_in_timm(released: Path, tmp_path: Path) -> None:
    result = invoke("export", released, "--out", tmp_path / "export")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["model_args"]["in_chans"] == 1 and config["model_args"]["stage3"] == "fused"
    card = (tmp_path / "export" / "README.md").read_text()
    assert "F3 (H/16) is the stage-3 token map fused with stages 1 and 2" in card
    backbone = timm.create_model(
        config["architecture"],
        pretrained=True,
        features_only=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "export" / "model.safetensors")),
        **config["model_args"],
    ).eval()
    model = load_reference_checkpoint(released, "infmae", in_chans=1).eval()
    imgs = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        f3 = backbone(imgs)[2]  # [1, 96, 14, 14]
        tokens = model.forward_encoder(imgs, torch.arange(196)[None])  # [1, 196, 96]
    torch.testing.assert_close(f3, tokens.transpose(1, 2).reshape(1, 96, 14, 14))


def test_raw_stage3_export_is_convmae_downstream_form(released: Path, tmp_path: Path) -> None:
    assert invoke("export", released, "--out", tmp_path, "--stage3", "raw").exit_code == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_args"]["stage3"] == "raw"
    assert "without the fusion" in (tmp_path / "README.md").read_text()
    backbone = timm.create_model(
        config["architecture"],
        pretrained=True,
        features_only=True,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors")),
        **config["model_args"],
    ).eval()
    encoder = load_reference_checkpoint(released, "infmae", in_chans=1).encoder.eval()
    imgs = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        _, _, tokens, _ = encoder._stages(imgs)
        raw = encoder.blocks3(tokens).transpose(1, 2).reshape(1, 96, 14, 14)
        torch.testing.assert_close(backbone(imgs)[2], raw)


def test_export_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, junk)
    result = invoke("export", junk, "--out", tmp_path / "out", "--kind", "infmae")
    assert result.exit_code != 0 and "not an InfMAE, ConvMAE or MAE" in result.output
    assert "Traceback" not in result.output


def test_probe_runs_on_a_released_encoder(released: Path, tmp_path: Path) -> None:
    from inf590k.synth import SynthConfig, synthesize
    from pretrain.probe import ProbeConfig, run_probe

    data = tmp_path / "irstd1k"
    synthesize(SynthConfig(layout="irstd1k", out=data, count=8, width=64, height=64))
    summary = run_probe(
        ProbeConfig(
            encoder=str(released),
            data=data,
            layout="irstd1k",
            out=tmp_path / "run",
            steps=2,
            img_size=64,
            batch_size=2,
            head_dim=16,
            baseline=False,
        )
    )
    assert "iou" in summary.metrics
    assert (tmp_path / "run" / "infmae_small-export" / "model.safetensors").is_file()


def test_feature_dedupe_loads_exports_and_released_checkpoints(
    released: Path, tmp_path: Path, ir_samples: Path
) -> None:
    """In a fresh process (no model package imported yet), as a user runs it."""
    from inf590k.build.ingest import IngestConfig, ingest
    from inf590k.execution.units import ExecutionOptions
    from pretrain.models import create_model, export_encoder

    (tmp_path / "src").mkdir()
    for rel in ("sirst/images/Misc_120.png", "sirst-v2/mixed/iraytek-54.png"):
        shutil.copy(ir_samples / rel, tmp_path / "src" / Path(rel).name)
    build = tmp_path / "build"
    ingest(
        IngestConfig(sources=(("folder:src", tmp_path / "src"),), build=build, execution=ExecutionOptions(workers=1, progress=False))
    )
    export_encoder(create_model("dugi_mae_tiny"), tmp_path / "ours")
    for model in (tmp_path / "ours", released):
        run = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from cli import main; main(sys.argv[1:])",
                "dedupe",
                "--build",
                str(build),
                "--contact-groups",
                "0",
                "--feature-model",
                str(model),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, run.stderr[-2000:]
    assert (build / "feature-model" / "infmae_small-export" / "config.json").is_file()


def test_pretrain_init_starts_from_the_released_weights(released: Path, tmp_path: Path) -> None:
    from pretrain.config import config_from_options
    from pretrain.train import Trainer, pretrain
    from tests.shardkit import make_dataset

    dataset = make_dataset(tmp_path / "ds", num_shards=1, per_shard=8)
    options = dict(
        shards=[str(dataset.root)],
        batch_size=4,
        workers=0,
        shuffle_buffer=4,
        shuffle_initial=2,
        model="dugi_mae_tiny",
        out=str(tmp_path / "run"),
        steps=1,
        lr=1e-3,
        log_every=1,
        progress=False,
        init=str(released),
        init_kind="infmae",
    )
    config = config_from_options(options)
    trainer = Trainer(config)
    state = read_reference_state(released)
    assert trainer.model.config.embed_dims == (32, 48, 96)  # from the checkpoint's shapes
    assert trainer.model.config.masking == "entropy" and trainer.model.ddg is not None
    assert torch.equal(trainer.model.encoder.patch_embed4.weight, state["patch_embed4.weight"])
    result = pretrain(config)
    assert result.step == 1 and result.loss is not None
