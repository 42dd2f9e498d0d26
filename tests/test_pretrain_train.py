"""The training loop on the CPU: real HTTP shards, exact resume, NaN skips, bad shards, outputs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from pretrain import checkpoint as ckpt
from pretrain.__main__ import build_parser, main
from pretrain.data import ShardUnreachableError
from pretrain.models import create_model
from pretrain.train import (
    OptimConfig,
    TrainingDiverged,
    build_optimizer,
    config_from_options,
    option_fields,
    parse_model_args,
    plan_schedule,
    pretrain,
)
from tests.shardkit import closed_port, corrupt_copy, make_dataset, serve_folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), num_shards=4, per_shard=16)


def options(run_dir: Path, shards, **overrides) -> dict:
    base = dict(
        shards=list(shards),
        batch_size=8,
        workers=0,
        shuffle_buffer=16,
        shuffle_initial=8,
        retries=2,
        retry_wait=0.01,
        model="mae_vit_tiny",
        out=str(run_dir),
        steps=6,
        epochs=10,
        warmup_epochs=1,
        lr=1e-3,
        log_every=1,
        ckpt_every=1000,
        progress=False,
        seed=7,
    )
    return {**base, **overrides}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------- recipe pieces


def test_schedule_follows_the_recipe():
    optim = OptimConfig(epochs=400, warmup_epochs=40, blr=1.5e-4)
    plan = plan_schedule(optim, batch_size=24, world_size=4, samples_per_epoch=590_000)
    assert plan.global_batch == 96 and plan.lr == pytest.approx(1.5e-4 * 96 / 256)
    assert plan.total_steps == 400 * (590_000 // 96) and plan.warmup_steps == 40 * (590_000 // 96)
    accum = plan_schedule(dataclasses.replace(optim, accum_steps=2), 24, 4, 590_000)
    assert accum.global_batch == 192 and accum.lr == pytest.approx(2 * plan.lr)
    assert plan_schedule(OptimConfig(steps=100, epochs=10, warmup_epochs=1), 8, 1, None) == (
        plan_schedule(OptimConfig(steps=100, epochs=10, warmup_epochs=1), 8, 1, None)
    )
    assert (
        plan_schedule(OptimConfig(steps=100, epochs=10, warmup_epochs=1), 8, 1, None).warmup_steps
        == 10
    )
    with pytest.raises(ValueError, match="--samples-per-epoch N or --steps N"):
        plan_schedule(optim, 8, 1, None)


def test_no_weight_decay_on_norms_biases_embeddings_and_tokens():
    model = create_model("mae_vit_tiny")
    plan = plan_schedule(OptimConfig(steps=10), 8, 1, None)
    optimizer, scheduler = build_optimizer(model, OptimConfig(steps=10), plan)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {
        names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]
    }
    exempt = {
        names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]
    }
    assert decayed and exempt and not decayed & exempt
    assert all(not n.endswith(".bias") and "norm" not in n for n in decayed)
    assert model.no_weight_decay() <= exempt
    assert any("pos_embed" in n or "token" in n for n in exempt)
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    lrs = []
    for step in range(10):
        scheduler.step_update(step)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(plan.lr) and lrs[-1] < lrs[2]


def test_options_map_one_to_one_to_config_fields():
    names = [f.name for _, f in option_fields()]
    assert len(names) == len(set(names))
    parser_dests = {a.dest for a in build_parser()._actions if a.dest != "help"}
    assert parser_dests == set(names)
    config = config_from_options(
        {"shards": ["a.tar"], "batch_size": 4, "blr": 1e-3, "compile": True}
    )
    assert config.data.batch_size == 4 and config.optim.blr == 1e-3 and config.run.compile
    with pytest.raises(ValueError, match="unknown pretrain option"):
        config_from_options({"batchsize": 4})
    assert parse_model_args(("img_size=32", "mask_ratio=0.6", "ddg=false")) == {
        "img_size": 32,
        "mask_ratio": 0.6,
        "ddg": False,
    }
    with pytest.raises(ValueError, match="field=value"):
        parse_model_args(("img_size",))


# ---------------------------------------------------------------- training runs


@pytest.mark.slow
def test_trains_over_real_http_and_loss_falls(dataset, tmp_path):
    run_dir = tmp_path / "run"
    with serve_folder(dataset.root) as base:
        result = pretrain(
            config_from_options(
                options(
                    run_dir,
                    [f"{base}/_info.json"],
                    steps=40,
                    lr=2e-3,
                    workers=1,
                    vis_every=20,
                    ckpt_every=20,
                    keep_last=1,
                )
            )
        )
    records = metrics(run_dir)
    losses = [r["loss"] for r in records]
    assert result.step == 40 and len(records) == 40
    assert sum(losses[-8:]) / 8 < 0.7 * sum(losses[:4]) / 4, losses
    assert all(r["images_per_s"] > 0 and 0 <= r["data_wait"] <= 1 for r in records)
    assert records[-1]["epoch"] == pytest.approx(40 * 8 / dataset.num_samples)
    assert max(r["lr"] for r in records) == pytest.approx(2e-3, rel=0.05)
    assert records[0]["mfu"] is None  # no known peak on the CPU
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["ckpt-00000040.pt"]
    assert sorted(p.name for p in (run_dir / "vis").iterdir()) == [
        "step-00000020.png",
        "step-00000040.png",
    ]


@pytest.mark.slow
def test_resumed_run_matches_an_uninterrupted_one(dataset, tmp_path):
    shards = [str(dataset.root)]
    common = dict(steps=8, deterministic=True)
    straight = pretrain(config_from_options(options(tmp_path / "a", shards, **common)))
    first = pretrain(config_from_options(options(tmp_path / "b", shards, stop_step=4, **common)))
    assert first.step == 4 and first.checkpoint.name == "ckpt-00000004.pt"
    resumed = pretrain(
        config_from_options(options(tmp_path / "b", shards, resume="auto", **common))
    )
    assert straight.step == resumed.step == 8
    a, b = ckpt.load(straight.checkpoint), ckpt.load(resumed.checkpoint)
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor, b["model"][name], atol=1e-6, rtol=0), name
    loss_a, loss_b = metrics(tmp_path / "a")[-1]["loss"], metrics(tmp_path / "b")[-1]["loss"]
    assert metrics(tmp_path / "b")[-1]["step"] == 8
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert a["ranks"][0]["data"] == b["ranks"][0]["data"]  # same stream position


def test_checkpoint_contents_load_with_weights_only(dataset, tmp_path):
    run = pretrain(
        config_from_options(
            options(tmp_path / "r", [str(dataset.root)], steps=5, ckpt_every=2, keep_last=2)
        )
    )
    names = [p.name for p in ckpt.list_checkpoints(run.run_dir)]
    assert names == ["ckpt-00000004.pt", "ckpt-00000005.pt"]
    assert not list((run.run_dir / "checkpoints").glob("*.tmp"))
    state = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    assert state["step"] == 5 and state["model_name"] == "mae_vit_tiny"
    for key in ("model", "optimizer", "scheduler", "scaler", "ranks", "config", "model_config"):
        assert key in state
    rank = state["ranks"][0]
    assert set(rank["rng"]) >= {"python", "numpy", "torch"}
    assert rank["data"]["batches"] == 5 and rank["data"]["positions"][0]["offset"] > 0
    assert rank["param_sha256"] == ckpt.parameter_digest(_model_from(state))
    assert state["config"]["data"]["shards"] == [str(dataset.root)]


def _model_from(state: dict) -> torch.nn.Module:
    return ckpt.model_from_state(state)


def _poisoned_model(bad_steps: set[int] | None):
    """mae_vit_tiny whose loss is NaN on the given forward calls (all calls when None)."""
    model = create_model("mae_vit_tiny")
    original = model.forward_loss
    calls = {"n": 0}

    def forward_loss(imgs, pred, mask):
        calls["n"] += 1
        loss = original(imgs, pred, mask)
        return loss * math.nan if bad_steps is None or calls["n"] in bad_steps else loss

    model.forward_loss = forward_loss
    return model


@pytest.mark.slow
def test_nan_steps_are_skipped_counted_and_capped(dataset, tmp_path):
    shards = [str(dataset.root)]
    result = pretrain(
        config_from_options(options(tmp_path / "some", shards, steps=6)), _poisoned_model({2, 3})
    )
    records = metrics(tmp_path / "some")
    assert result.step == 6 and records[-1]["nan_skips"] == 2
    assert all(math.isfinite(r["loss"]) for r in records if r["step"] not in (2, 3))

    poisoned = _poisoned_model(None)
    initial = {name: tensor.clone() for name, tensor in poisoned.state_dict().items()}
    result = pretrain(
        config_from_options(options(tmp_path / "all", shards, steps=4, max_nan_skips=10)), poisoned
    )
    state = ckpt.load(result.checkpoint)
    assert all(int(v["step"]) == 0 for v in state["optimizer"]["state"].values())
    for name, tensor in initial.items():
        assert torch.equal(tensor, state["model"][name]), f"{name} changed on a skipped step"
    with pytest.raises(TrainingDiverged, match="--max-nan-skips 2"):
        pretrain(
            config_from_options(options(tmp_path / "stop", shards, steps=6, max_nan_skips=2)),
            _poisoned_model(None),
        )


@pytest.mark.slow
def test_corrupt_shard_is_skipped_and_missing_url_is_named(dataset, tmp_path):
    broken = tmp_path / "640x512" / "shard-000001.tar"  # named as in _info.json: length known
    broken.parent.mkdir()
    corrupt_copy(dataset.shards[1], broken)
    shards = [str(dataset.shards[0]), str(broken), str(dataset.shards[2])]
    result = pretrain(
        config_from_options(
            options(tmp_path / "run", shards, steps=8, resampled=False, info=str(dataset.info_path))
        )
    )
    last = metrics(tmp_path / "run")[-1]
    assert result.step == 8 and last["shard_errors"] + last["bad_samples"] >= 1

    missing = f"http://127.0.0.1:{closed_port()}/ds/640x512/shard-000009.tar"
    with pytest.raises(ShardUnreachableError, match=missing.replace(".", r"\.")):
        pretrain(
            config_from_options(
                options(
                    tmp_path / "missing",
                    [str(dataset.shards[0]), missing],
                    steps=20,
                    resampled=False,
                    workers=1,
                    info=str(dataset.info_path),
                    max_shard_failures=0.4,  # 1 of the pass's 2 shards failing stops the run
                )
            )
        )


# ---------------------------------------------------------------- outputs


def test_visualize_and_export_a_checkpoint(dataset, tmp_path, ir_samples):
    from pretrain.checkpoint import export_checkpoint
    from pretrain.visualize import visualize_checkpoint

    run = pretrain(config_from_options(options(tmp_path / "r", [str(dataset.root)], steps=2)))
    image = next(p for p in sorted(ir_samples.rglob("*")) if p.suffix.lower() in {".png", ".jpg"})
    out = visualize_checkpoint(run.checkpoint, image, tmp_path / "grid.png")
    import cv2

    grid = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert grid.shape == (64, 3 * 64 + 2 * 2)  # input | masked | prediction, 2-px gaps
    assert grid[:, :64].std() > 1  # the real image, not a blank tile

    folder = export_checkpoint(run.checkpoint, tmp_path / "export")
    from safetensors.torch import load_file

    weights = load_file(str(folder / "model.safetensors"))
    model = _model_from(ckpt.load(run.checkpoint))
    assert set(weights) == set(model.encoder.state_dict())
    card = (folder / "README.md").read_text()
    assert "mae_vit_tiny" in card and "steps: 2" in card
    assert json.loads((folder / "config.json").read_text())


def test_module_entry_point_runs_a_tiny_training(dataset, tmp_path, capsys):
    run_dir = tmp_path / "cli"
    code = main(
        [
            "pretrain",
            "--shards",
            str(dataset.root),
            "--model",
            "mae_vit_tiny",
            "--out",
            str(run_dir),
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--workers",
            "0",
            "--lr",
            "1e-3",
            "--no-progress",
            "--log-every",
            "1",
            "--shuffle-buffer",
            "8",
        ]
    )
    assert code == 0 and len(metrics(run_dir)) == 2
    assert "pretrain: step 2/2" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--model", "mae_vit_tiny"])  # --shards missing


@pytest.mark.slow
def test_gradient_accumulation_matches_the_full_batch(dataset, tmp_path):
    """8 images in one micro-batch == 2 micro-batches of 4 (deterministic entropy masking)."""
    shards = [str(dataset.root)]
    common = dict(steps=3, model_args=["masking=entropy"], clip_grad=1.0, deterministic=True)
    full = pretrain(config_from_options(options(tmp_path / "full", shards, **common)))
    accumulated = pretrain(
        config_from_options(
            options(tmp_path / "acc", shards, batch_size=4, accum_steps=2, **common)
        )
    )
    a, b = ckpt.load(full.checkpoint)["model"], ckpt.load(accumulated.checkpoint)["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name
    assert metrics(tmp_path / "acc")[-1]["loss"] == pytest.approx(
        metrics(tmp_path / "full")[-1]["loss"], abs=1e-5
    )


def test_tensorboard_without_the_package_says_what_to_install(dataset, tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="pip install tensorboard"):
            pretrain(
                config_from_options(
                    options(tmp_path / "tb", [str(dataset.root)], steps=1, tensorboard=True)
                )
            )
    else:
        pytest.skip("tensorboard is installed")
