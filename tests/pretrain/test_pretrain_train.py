"""The training loop on the CPU: real HTTP shards, exact resume, NaN skips, bad shards, outputs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain import checkpoint as ckpt
from pretrain.__main__ import build_parser, main
from pretrain.config import OptimConfig, config_from_options, option_fields, parse_model_args
from pretrain.data import ShardUnreachableError
from pretrain.models import create_model
from pretrain.runs import RunExistsError, TrainingDiverged
from pretrain.schedule import build_optimizer, plan_schedule
from pretrain.train import pretrain
from pretrain.visualize import GAP, HEADER, ROW_LABEL
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


def test_info_json_is_fetched_with_the_run_settings_and_not_twice(dataset, tmp_path, monkeypatch):
    import pretrain.data as data

    opened: list[int] = []
    real = data.open_url

    def counting(url, config):
        if url.endswith("_info.json"):
            opened.append(config.retries)
        return real(url, config)

    monkeypatch.setattr(data.index, "open_url", counting)
    shards = [f"{dataset.root}/*/*.tar"]
    result = pretrain(config_from_options(options(tmp_path / "run", shards, steps=1, retries=3)))
    assert result.step == 1
    assert opened and set(opened) == {3}, opened  # the run's --retries, every time
    assert len(opened) <= 2, opened  # found once (probe + read), not looked for again


def test_resume_with_other_optimisation_options_is_refused(dataset, tmp_path):
    run_dir = tmp_path / "run"
    shards = [str(dataset.root)]
    pretrain(config_from_options(options(run_dir, shards, steps=2, lr=1.5e-3)))
    with pytest.raises(ckpt.CheckpointError) as info:
        pretrain(
            config_from_options(
                options(run_dir, shards, steps=4, lr=None, batch_size=4, resume="auto")
            )
        )
    message = str(info.value)
    assert "\n" not in message and "--lr 0.0015" in message and "--batch-size 8" in message
    assert "--steps" not in message and "--blr" not in message
    longer = pretrain(
        config_from_options(options(run_dir, shards, steps=4, lr=1.5e-3, resume="auto"))
    )
    assert longer.step == 4  # a longer run with the same options goes on


def test_resume_compares_the_model_config_not_the_option_strings(dataset, tmp_path):
    """`mask_ratio=.75` is the model `mask_ratio=0.75` was: resumed; another value is refused
    naming the recorded one."""
    run_dir = tmp_path / "run"
    shards = [str(dataset.root)]
    pretrain(config_from_options(options(run_dir, shards, steps=2, model_args=["mask_ratio=0.75"])))
    resumed = pretrain(
        config_from_options(
            options(run_dir, shards, steps=3, model_args=["mask_ratio=.75"], resume="auto")
        )
    )
    assert resumed.step == 3
    with pytest.raises(ckpt.CheckpointError, match="--model-args mask_ratio=0.75"):
        pretrain(
            config_from_options(
                options(run_dir, shards, steps=4, model_args=["mask_ratio=0.6"], resume="auto")
            )
        )


def test_a_failed_run_leaves_no_empty_out_behind(tmp_path):
    dead = [f"http://127.0.0.1:{closed_port()}/x-{i:06d}.tar" for i in range(2)]
    out = tmp_path / "new"
    with pytest.raises(ShardUnreachableError):
        pretrain(config_from_options(options(out, dead, steps=2, retries=1)))
    assert not out.exists()
    out.mkdir()  # a folder the user made stays
    with pytest.raises(ShardUnreachableError):
        pretrain(config_from_options(options(out, dead, steps=2, retries=1)))
    assert out.is_dir()


# ---------------------------------------------------------------- outputs


def test_visualize_and_export_a_checkpoint(dataset, tmp_path, ir_samples):
    from pretrain.checkpoint import export_checkpoint
    from pretrain.visualize import visualize_checkpoint

    run = pretrain(config_from_options(options(tmp_path / "r", [str(dataset.root)], steps=2)))
    image = next(p for p in sorted(ir_samples.rglob("*")) if p.suffix.lower() in {".png", ".jpg"})
    out = visualize_checkpoint(run.checkpoint, image, tmp_path / "grid.png")
    import cv2

    grid = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    # 64-px crops drawn 4x, 4 columns, under a band naming the image
    assert grid.shape == (HEADER + ROW_LABEL + 256, 4 * 256 + 3 * GAP)
    assert grid[HEADER + ROW_LABEL :, :256].std() > 1  # the real image, not a blank tile
    assert grid[HEADER : HEADER + ROW_LABEL].min() < 128  # the image's name

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


def without_key_bias(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A qkv bias without its key third: that part's gradient is zero in exact arithmetic
    (softmax is shift-invariant), so AdamW turns rounding noise into lr-sized steps there."""
    if not name.endswith("attn.qkv.bias"):
        return tensor
    query, _, value = tensor.chunk(3)
    return torch.cat([query, value])


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
        assert torch.allclose(
            without_key_bias(name, a[name]), without_key_bias(name, b[name]), atol=1e-5
        ), name
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


# ---------------------------------------------------------------- runs you can trust


def _digests(run_dir: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def test_out_holding_a_run_is_refused_without_resume(dataset, tmp_path):
    run_dir = tmp_path / "run"
    pretrain(config_from_options(options(run_dir, [str(dataset.root)], steps=2)))
    before = _digests(run_dir)
    with pytest.raises(RunExistsError, match=r"holds a run .*--resume auto.*another --out"):
        pretrain(config_from_options(options(run_dir, [str(dataset.root)], steps=2)))
    assert _digests(run_dir) == before  # nothing of the earlier run was touched

    from click.testing import CliRunner

    from cli import main as cli_main

    args = ["pretrain", "--shards", str(dataset.root), "--model", "mae_vit_tiny", "--out"]
    result = CliRunner().invoke(cli_main, [*args, str(run_dir), "--steps", "2", "--workers", "0"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--resume auto" in result.output and "Traceback" not in result.output
    assert _digests(run_dir) == before


def test_resume_auto_on_a_finished_run_reports_it_and_returns_its_checkpoint(dataset, tmp_path):
    run_dir = tmp_path / "run"
    shards = [str(dataset.root)]
    first = pretrain(config_from_options(options(run_dir, shards, steps=2)))
    before = _digests(run_dir)
    again = pretrain(config_from_options(options(run_dir, shards, steps=2, resume="auto")))
    assert again.step == 2 and again.checkpoint == first.checkpoint and again.finished_before
    assert "finished at step 2" in str(again) and again.loss == first.loss
    assert "is not more than that" not in str(again)
    shorter = pretrain(config_from_options(options(run_dir, shards, steps=1, resume="auto")))
    assert shorter.finished_before and shorter.step == 2  # a run is never cut back
    assert "finished at step 2 and this length (1 steps) is not more than that" in str(shorter)
    assert _digests(run_dir) == before

    from click.testing import CliRunner

    from cli import main as cli_main

    result = CliRunner().invoke(
        cli_main,
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
            "--workers",
            "0",
            "--resume",
            "auto",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "finished at step 2" in result.output and str(first.checkpoint) in result.output


def test_resume_skips_a_damaged_checkpoint_and_logs_each_step_once(dataset, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shards = [str(dataset.root)]
    common = dict(steps=6, ckpt_every=3, keep_last=3)
    pretrain(config_from_options(options(run_dir, shards, **common)))
    newest = ckpt.checkpoint_path(run_dir, 6)
    newest.write_bytes(newest.read_bytes()[:1000])  # cut short, as by a full disk
    with caplog.at_level("WARNING", logger="pretrain.train"):
        resumed = pretrain(config_from_options(options(run_dir, shards, resume="auto", **common)))
    assert "ckpt-00000006.pt damaged" in caplog.text and "ckpt-00000003.pt" in caplog.text
    assert resumed.step == 6 and not resumed.finished_before
    assert "(resumed from ckpt-00000003.pt: ckpt-00000006.pt damaged)" in str(resumed)
    assert ckpt.load(resumed.checkpoint)["step"] == 6  # rewritten whole
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3, 4, 5, 6]

    for path in ckpt.list_checkpoints(run_dir):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="no readable checkpoint"):
        pretrain(config_from_options(options(run_dir, shards, resume="auto", **common)))
    with pytest.raises(ckpt.CheckpointError, match="not a readable training checkpoint"):
        pretrain(config_from_options(options(run_dir, shards, resume=str(newest), **common)))


def test_the_run_ends_with_one_closing_line(dataset, tmp_path):
    from click.testing import CliRunner

    from cli import main as cli_main

    result = CliRunner().invoke(
        cli_main,
        [
            "pretrain",
            "--shards",
            str(dataset.root),
            "--model",
            "mae_vit_tiny",
            "--out",
            str(tmp_path / "run"),
            "--steps",
            "2",
            "--workers",
            "0",
            "--no-progress",
            "--batch-size",
            "4",
            "--shuffle-buffer",
            "8",
            "--lr",
            "1e-3",
        ],
    )
    assert result.exit_code == 0, result.output
    closing = [line for line in result.output.splitlines() if line.startswith("pretrain:")]
    assert len(closing) == 1 and closing[0].startswith("pretrain: step 2/2, loss ")
    assert "last checkpoint" in closing[0]


NC_SOURCES = [
    {
        "id": "sirst",
        "class_id": 0,
        "name": "SIRST",
        "license": "CC BY-NC-SA",
        "license_link": None,
        "modality": "mwir",
        "samples": 20,
    },
    {
        "id": "llvip",
        "class_id": 1,
        "name": "LLVIP",
        "license": "CC BY 4.0",
        "license_link": None,
        "modality": "lwir",
        "samples": 12,
    },
]


def _with_sources(root: Path, sources: list[dict] | None) -> Path:
    """A copy of a small dataset whose _info.json lists `sources` (None: no such key)."""
    ds = make_dataset(root, num_shards=2, per_shard=16)
    info = json.loads(ds.info_path.read_text())
    if sources is not None:
        info["sources"] = sources
    ds.info_path.write_text(json.dumps(info))
    return ds.root


def test_checkpoint_and_card_record_what_ran(tmp_path):
    from pretrain.checkpoint import export_checkpoint

    root = _with_sources(tmp_path / "ds", NC_SOURCES)
    with serve_folder(root) as base:
        run = pretrain(
            config_from_options(
                options(tmp_path / "run", [f"{base}/_info.json"], steps=2, lr=1.5e-3, batch_size=8)
            )
        )
    state = ckpt.load(run.checkpoint)
    record = state["record"]
    assert record["lr"] == pytest.approx(1.5e-3) and record["blr"] == pytest.approx(1.5e-3 * 32)
    assert record["steps"] == 2 and record["images_seen"] == 16
    assert record["batch"] == {"per_process": 8, "world_size": 1, "accum_steps": 1, "global": 8}
    assert record["data"]["samples"] == 32 and record["data"]["shards"] == 2
    assert [s["id"] for s in record["data"]["sources"]] == ["sirst", "llvip"]
    assert record["license"]["id"] == "other" and record["license"]["name"] == "non-commercial"
    assert "127.0.0.1" not in json.dumps(state["config"]) + json.dumps(record)

    folder = export_checkpoint(run.checkpoint, tmp_path / "export")
    card = (folder / "README.md").read_text()
    assert "license: other" in card and "license_name: non-commercial" in card
    assert "Non-commercial use only" in card and "SIRST: CC BY-NC-SA" in card
    assert "apache-2.0" not in card and "127.0.0.1" not in card
    assert "learning rate: 0.0015 peak (base lr 0.048" in card
    assert "- batch: 8 per process" in card and "32 samples; sources: SIRST, LLVIP" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["pretrained_cfg"]["license"] == "non-commercial"
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_unknown_source_licences_give_unknown_weights(tmp_path):
    from pretrain.checkpoint import export_checkpoint

    root = _with_sources(tmp_path / "ds", None)
    run = pretrain(config_from_options(options(tmp_path / "run", [str(root)], steps=1)))
    card = (export_checkpoint(run.checkpoint, tmp_path / "export") / "README.md").read_text()
    assert "license: unknown" in card and "apache" not in card
    assert f"- data: {root}, 32 samples; sources: not recorded" in card


def test_grids_are_labelled_and_large_at_each_vis_step_and_the_end(dataset, tmp_path):
    import cv2

    run_dir = tmp_path / "run"
    pretrain(config_from_options(options(run_dir, [str(dataset.root)], steps=5, vis_every=2)))
    names = sorted(p.name for p in (run_dir / "vis").iterdir())
    assert names == ["step-00000002.png", "step-00000004.png", "step-00000005.png"]
    default_dir = tmp_path / "default"  # --vis-every left at 0: the last step's grid all the same
    pretrain(config_from_options(options(default_dir, [str(dataset.root)], steps=3)))
    assert sorted(p.name for p in (default_dir / "vis").iterdir()) == ["step-00000003.png"]
    grid = cv2.imread(str(run_dir / "vis" / names[-1]), cv2.IMREAD_UNCHANGED)
    panel = 256  # mae_vit_tiny's 64-px crops, drawn 4x
    assert grid.shape == (HEADER + 8 * panel + 7 * GAP, 4 * panel + 3 * GAP)
    for column in range(4):  # a dark label over every column, on white
        band = grid[:HEADER, column * (panel + GAP) : column * (panel + GAP) + panel]
        assert band.min() < 128 and np.median(band) == 255


def test_export_and_visualize_refuse_wrong_input_in_one_line(dataset, tmp_path):
    from click.testing import CliRunner

    from cli import main as cli_main

    run = pretrain(config_from_options(options(tmp_path / "r", [str(dataset.root)], steps=1)))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x80\x04not a checkpoint at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2), "why": OptimConfig()}, foreign)  # not weights-only
    text = tmp_path / "notes.png"
    text.write_text("no image here")
    runner = CliRunner()
    exported = tmp_path / "export"
    assert (
        runner.invoke(cli_main, ["export", str(run.checkpoint), "--out", str(exported)]).exit_code
        == 0
    )
    cases = [
        ["export", str(junk), "--out", str(tmp_path / "e1")],
        ["export", str(foreign), "--out", str(tmp_path / "e2")],
        ["visualize", str(run.checkpoint), "--image", str(text), "--out", str(tmp_path / "v.png")],
        ["visualize", str(exported), "--image", str(text), "--out", str(tmp_path / "v.png")],
        ["visualize", str(junk), "--image", str(text), "--out", str(tmp_path / "v.png")],
    ]
    for args in cases:
        result = runner.invoke(cli_main, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 1 and len(lines) == 1, (args, result.output)
        assert "Traceback" not in result.output and "weights_only" not in result.output, args
    assert "export" in runner.invoke(cli_main, cases[3]).output  # says it is an export folder
    assert not (tmp_path / "e1").exists() and not (tmp_path / "v.png").exists()


def test_module_entry_point_gives_bad_input_one_line(tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["export", str(junk), "--out", str(tmp_path / "export")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a readable training checkpoint" in err[0]
    assert not (tmp_path / "export").exists()


@pytest.mark.parametrize(
    "flag, value",
    [("--log-every", "0"), ("--ckpt-every", "0"), ("--val-every", "-5"), ("--vis-every", "-1"),
     ("--val-samples", "-3"), ("--steps", "0"), ("--steps", "-3")],  # fmt: skip
)
def test_a_bad_interval_or_val_samples_is_one_line_before_training(
    dataset, tmp_path, flag, value, capsys
):
    run_dir = tmp_path / "run"
    code = main(["pretrain", "--shards", str(dataset.root), "--model", "mae_vit_tiny",
                 "--steps", "2", "--workers", "0", "--out", str(run_dir), "--no-progress",
                 flag, value])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and f"{flag} {value}: give" in err[0], err
    assert not run_dir.exists()


def test_the_data_is_resolved_once_from_the_folders_index(synthetic_build):
    """A dataset folder's data/_info.json lists the shards, their samples and the sources the
    record names; the same index given as a URL resolves alike."""
    from pretrain.data import resolve_data
    from pretrain.provenance import describe_data

    dataset = synthetic_build[1]
    config = config_from_options({"shards": [str(dataset)]})
    resolved = resolve_data(config.data)
    assert resolved.info_url == str(dataset / "data" / "_info.json")
    record = describe_data(config, resolved)
    assert sorted(s["id"] for s in record.sources) == ["roadscene", "sirst"]
    assert record.name == str(dataset) and record.samples == resolved.info.num_samples
    assert resolved.urls == list(resolved.info.filenames)
    by_index = resolve_data(config_from_options({"shards": [resolved.info_url]}).data)
    assert by_index.urls == resolved.urls and by_index.info == resolved.info
