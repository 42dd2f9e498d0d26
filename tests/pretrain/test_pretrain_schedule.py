"""The lr schedule of a run, and of a run resumed with another length.

What "agree" means for a run done in two parts: the lr of a step is a function of (step, length,
warm-up) only, so every step has the lr a run done in one go has at that step with the length
the run was told when the step was trained. A run stopped and resumed with the same length
agrees with the one-go run on every step; a run extended from N to L steps trained steps 1..N
as the N-step run did (the past is not rewritten) and every step after N exactly as a one-go
L-step run does (its warm-up is the recipe's --warmup-epochs, kept: a resume refuses another).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main as cli_main
from pretrain import checkpoint as ckpt
from pretrain.config import OptimConfig, config_from_options
from pretrain.models import create_model
from pretrain.schedule import (
    build_optimizer,
    lr_at,
    plan_schedule,
    recorded_schedules,
)
from pretrain.train import pretrain
from tests.shardkit import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), num_shards=2, per_shard=16)


def options(run_dir: Path, shards, **overrides) -> dict:
    base = dict(
        shards=list(shards), batch_size=4, workers=0, shuffle_buffer=8, shuffle_initial=4,
        model="mae_vit_tiny", out=str(run_dir), steps=4, epochs=4, warmup_epochs=1,
        lr=1e-3, log_every=1, ckpt_every=1000, keep_last=5, progress=False, seed=3, threads=1,
    )  # fmt: skip
    return {**base, **overrides}


def lrs(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), steps  # each step logged once
    return {r["step"]: r["lr"] for r in records}


# ---------------------------------------------------------------- the function


def test_lr_is_warm_up_then_cosine_as_timm_computes_it():
    import timm.scheduler

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    timm_schedule = timm.scheduler.CosineLRScheduler(
        optimizer, t_initial=17, lr_min=1e-5, warmup_t=3, warmup_lr_init=0.0,
        warmup_prefix=True, t_in_epochs=False,
    )  # fmt: skip
    for step in range(25):
        timm_schedule.step_update(step)
        assert lr_at(step, 20, 3, 0.1, 1e-5) == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-12
        )
    assert lr_at(0, 20, 3, 0.1, 0.0) == 0.0 and lr_at(3, 20, 3, 0.1, 0.0) == 0.1
    assert lr_at(0, 20, 0, 0.1, 0.0) == 0.1  # no warm-up: the peak at once
    assert lr_at(19, 20, 3, 0.1, 0.0) > 0.0 and lr_at(20, 20, 3, 0.1, 0.0) == 0.0


def test_scheduler_is_rebuilt_from_the_options_not_restored():
    plan = plan_schedule(OptimConfig(steps=30, epochs=10, warmup_epochs=1), 8, 1, None)
    _, scheduler = build_optimizer(create_model("mae_vit_tiny"), OptimConfig(steps=30), plan)
    assert scheduler.state_dict() == {"total_steps": 30, "warmup_steps": 3, "lr": plan.lr,
                                      "min_lr": 0.0}  # fmt: skip
    longer = plan_schedule(OptimConfig(steps=50, epochs=10, warmup_epochs=1), 8, 1, None)
    # 30 steps then 50: a step trains at the lr of the length it was told, never 0 before the end
    assert all(lr_at(s, 50, longer.warmup_steps, longer.lr, 0.0) > 0 for s in range(30, 50))


def test_recorded_lengths_are_read_from_older_checkpoints_too():
    segments = [{"from_step": 0, "total_steps": 30, "warmup_steps": 3},
                {"from_step": 30, "total_steps": 50, "warmup_steps": 5}]  # fmt: skip
    assert recorded_schedules({"record": {"schedules": segments}}) == segments
    # before `schedules`: timm's scheduler state holds what the run really trained with
    timm_state = {"t_initial": 27, "warmup_t": 3}
    old = {"record": {"total_steps": 50, "warmup_steps": 5}, "scheduler": timm_state}
    assert recorded_schedules(old) == [segments[0]]
    assert recorded_schedules({"record": {"total_steps": 8, "warmup_steps": 1}}) == [
        {"from_step": 0, "total_steps": 8, "warmup_steps": 1}
    ]
    assert recorded_schedules({}) == []


# ---------------------------------------------------------------- runs


def test_extending_a_finished_run_trains_on_at_the_lr_of_the_new_length(
    dataset, tmp_path, capsys
):
    shards = [str(dataset.root)]
    one_go = pretrain(config_from_options(options(tmp_path / "one", shards, steps=8)))
    first = pretrain(config_from_options(options(tmp_path / "two", shards, steps=4)))
    capsys.readouterr()
    extended = pretrain(
        config_from_options(options(tmp_path / "two", shards, steps=8, resume="auto"))
    )
    out = capsys.readouterr().out.splitlines()
    notes = [line for line in out if line.startswith("resume:")]
    assert len(notes) == 1 and "extended from 4 to 8 steps at step 4" in notes[0], out
    assert "warm-up 2 steps, cosine to step 8" in notes[0]
    assert extended.step == 8 and not extended.finished_before

    whole, parts = lrs(tmp_path / "one"), lrs(tmp_path / "two")
    assert sorted(parts) == list(range(1, 9))
    assert all(parts[step] > 0 for step in range(5, 9)), parts
    for step in range(5, 9):  # after the resume: exactly the one-go run's lr
        assert parts[step] == whole[step], (step, parts, whole)
    four = lr_at  # before it: the 4-step run's (warm-up 1 step of the recipe's 1 of 4 epochs)
    assert [parts[s] for s in range(1, 5)] == [four(s - 1, 4, 1, 1e-3, 0.0) for s in range(1, 5)]
    assert parts[4] < parts[5]  # the finished run's lr was near 0; the longer one rises again

    before, after = ckpt.load(first.checkpoint), ckpt.load(extended.checkpoint)
    assert ckpt.parameter_digest(ckpt.model_from_state(before)) != ckpt.parameter_digest(
        ckpt.model_from_state(after)
    )  # the weights moved
    record = after["record"]
    assert record["total_steps"] == 8 and record["warmup_steps"] == 2
    assert record["schedules"] == [
        {"from_step": 0, "total_steps": 4, "warmup_steps": 1},
        {"from_step": 4, "total_steps": 8, "warmup_steps": 2},
    ]
    card = ckpt.model_card(after, "model.safetensors")
    assert "4 steps planned, extended at step 4 to 8" in card, card
    assert ckpt.load(one_go.checkpoint)["record"]["schedules"] == [
        {"from_step": 0, "total_steps": 8, "warmup_steps": 2}
    ]


def test_a_run_stopped_and_resumed_with_its_length_agrees_on_every_step(dataset, tmp_path):
    shards = [str(dataset.root)]
    pretrain(config_from_options(options(tmp_path / "one", shards, steps=6)))
    pretrain(config_from_options(options(tmp_path / "two", shards, steps=6, stop_step=3)))
    again = pretrain(
        config_from_options(options(tmp_path / "two", shards, steps=6, resume="auto"))
    )
    assert lrs(tmp_path / "one") == lrs(tmp_path / "two")
    assert ckpt.load(again.checkpoint)["record"]["schedules"] == [
        {"from_step": 0, "total_steps": 6, "warmup_steps": 2}
    ]


def test_extending_by_epochs_keeps_the_warm_up_steps(dataset, tmp_path, capsys):
    shards = [str(dataset.root)]
    common = dict(steps=None, samples_per_epoch=8, warmup_epochs=1)  # 2 steps an epoch
    pretrain(config_from_options(options(tmp_path / "run", shards, epochs=2, **common)))
    capsys.readouterr()
    done = pretrain(
        config_from_options(options(tmp_path / "run", shards, epochs=3, resume="auto", **common))
    )
    assert "extended from 4 to 6 steps" in capsys.readouterr().out
    assert [s["warmup_steps"] for s in ckpt.load(done.checkpoint)["record"]["schedules"]] == [2, 2]
    assert all(lr > 0 for step, lr in lrs(tmp_path / "run").items() if step > 4)


def test_a_shorter_length_than_the_finished_run_changes_nothing(dataset, tmp_path, capsys):
    shards = [str(dataset.root)]
    first = pretrain(config_from_options(options(tmp_path / "run", shards, steps=3)))
    again = pretrain(config_from_options(options(tmp_path / "run", shards, steps=2, resume="auto")))
    assert again.finished_before and again.checkpoint == first.checkpoint
    assert "resume:" not in capsys.readouterr().out
    assert "resume it with a larger --steps or --epochs" in str(again)


def test_cli_extension_prints_the_opening_line_the_note_and_each_log_record(dataset, tmp_path):
    run_dir = tmp_path / "run"
    args = ["pretrain", "--shards", str(dataset.root), "--model", "mae_vit_tiny", "--out",
            str(run_dir), "--workers", "0", "--batch-size", "4", "--shuffle-buffer", "8",
            "--lr", "1e-3", "--epochs", "4", "--warmup-epochs", "1", "--no-progress",
            "--threads", "1"]  # fmt: skip
    first = CliRunner().invoke(cli_main, [*args, "--steps", "2", "--log-every", "1"])
    assert first.exit_code == 0, first.output
    result = CliRunner().invoke(
        cli_main, [*args, "--steps", "4", "--log-every", "1", "--resume", "auto"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("pretrain on cpu: 1 torch thread, 0 loader workers (")
    assert "as --threads asks" in lines[0]
    assert lines[1].startswith("resume: run extended from 2 to 4 steps at step 2;")
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["3/4", "4/4"]
    assert all(" loss 0." in line and " lr " in line for line in steps), steps
    assert float(steps[0].split(" lr ")[1].split()[0]) > 0
    assert lines[-1].startswith("pretrain: step 4/4, loss ")
