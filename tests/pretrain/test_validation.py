"""The validation loss: a held-out set the run never trains on, fixed masks, a loss that
compares models whatever their masking, recorded and reused on resume."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain import checkpoint as ckpt
from pretrain.config import DataConfig, config_from_options
from pretrain.data import ShardStream, ShardUnreachableError, resolve_data
from pretrain.models import create_model
from pretrain.models.pixels import normalise
from pretrain.train import pretrain
from pretrain.validation import (
    COMMON_MASK_RATIO,
    HeldOut,
    ValidationData,
    Validator,
    centre_crop,
    choose_held_out,
    read_held_out,
    sample_held_out,
    split_off_val_shards,
    validation_due,
)
from tests.conftest import REPO_ROOT
from tests.shardkit import make_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), num_shards=4, per_shard=16)


def options(run_dir: Path, dataset, **overrides) -> dict:
    base = dict(
        shards=[str(dataset.info_path)],
        batch_size=8,
        workers=0,
        shuffle_buffer=16,
        shuffle_initial=8,
        model="dugi_mae_tiny",
        model_args=["img_size=32"],
        out=str(run_dir),
        steps=6,
        epochs=10,
        warmup_epochs=1,
        lr=1e-3,
        log_every=4,
        ckpt_every=1000,
        progress=False,
        seed=7,
        val_samples=6,
        val_every=3,
    )
    return {**base, **overrides}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def record_of(run_dir: Path) -> dict:
    return ckpt.load(ckpt.list_checkpoints(run_dir)[-1])["record"]


def random_images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (count, 1, size, size), dtype=np.uint8))


# ---------------------------------------------------------------- the held-out set


def test_the_run_never_trains_on_the_held_out_images(dataset, tmp_path, monkeypatch, capsys):
    trained_on: list[str] = []
    decode = ShardStream.decode

    def spy(self, sample, rng):
        trained_on.append(sample["__key__"])
        return decode(self, sample, rng)

    monkeypatch.setattr(ShardStream, "decode", spy)  # workers=0: the stream runs in-process
    run_dir = tmp_path / "run"
    pretrain(config_from_options(options(run_dir, dataset, steps=12)))  # 96 draws of 64 images
    held = record_of(run_dir)["validation"]
    assert held["kind"] == "sample" and held["samples"] == 6 == len(set(held["uids"]))
    every_uid = {uid for shard in dataset.uids for uid in shard}
    assert set(held["uids"]) <= every_uid
    assert len(trained_on) == 96 and not set(trained_on) & set(held["uids"])
    assert len(set(held["shards"])) > 1  # spread over shards, at most half of each
    for shard in set(held["shards"]):
        assert held["shards"].count(shard) <= 16 // 2
    out = capsys.readouterr().out
    assert "validation: 6 held-out images (seeded sample of" in out


def test_validation_is_logged_printed_and_plotted(dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    pretrain(config_from_options(options(run_dir, dataset)))
    records = metrics(run_dir)
    validated = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validated] == [3, 6]  # every --val-every steps and the end
    assert [r["step"] for r in records] == [3, 4, 6]  # a validation step is also a log step
    for record in validated:
        assert record["val_images"] == 6 and record["val_seconds"] >= 0
        assert 0 < record["val_loss"] < 10 and 0 < record["val_common_loss"] < 10
        assert "loss" in record and "lr" in record  # the training fields stay there
    out = capsys.readouterr().out
    assert out.count("validation at step") == 2
    assert "entropy masking, masked patches" in out and "common random mask 0.75" in out
    assert (run_dir / "curves.png").stat().st_size > 0


def test_the_same_seed_and_data_hold_out_the_same_images(dataset):
    config = DataConfig(shards=(str(dataset.info_path),), val_samples=6)
    urls = resolve_data(config).urls
    first = sample_held_out(urls, config, seed=3, count=6)
    assert first == sample_held_out(urls, config, seed=3, count=6)
    assert first != sample_held_out(urls, config, seed=4, count=6)
    # the images: centre crops at the model's size, in the record's order
    images = read_held_out(first, urls, config, (32, 32))
    assert images.shape == (6, 1, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images, read_held_out(first, urls, config, (32, 32)))


def test_validation_is_off_with_one_line_when_it_cannot_be_held_out(dataset, tmp_path, capsys):
    data = ValidationData(resolve_data(DataConfig(shards=(str(dataset.info_path),))), ())
    too_many = DataConfig(val_samples=7)  # 64 samples: at most 6 held out
    held, note = choose_held_out(too_many, data, 0, 64)
    assert held is None and "--val-samples 6 or fewer" in note and "10%" in note
    held, note = choose_held_out(DataConfig(val_samples=6), data, 0, None)
    assert held is None and "size is unknown" in note and "--val-shards" in note
    held, note = choose_held_out(DataConfig(val_samples=0), data, 0, 64)
    assert held is None and note == "validation off (--val-samples 0)"
    # the defaults on a small dataset: a run without validation, said in one line
    run_dir = tmp_path / "run"
    pretrain(config_from_options(options(run_dir, dataset, val_samples=None, val_every=None)))
    out = capsys.readouterr().out
    assert "validation off: 256 held-out images would be more than 10% of the 64" in out
    assert not any("val_loss" in r for r in metrics(run_dir))
    assert record_of(run_dir)["validation"] is None


def test_val_shards_are_left_out_of_training(dataset, tmp_path, capsys):
    held_shard = str(dataset.shards[1])
    config = DataConfig(shards=(str(dataset.info_path),), val_shards=(held_shard,), val_samples=5)
    data = split_off_val_shards(config, resolve_data(config))
    assert len(data.train.urls) == 3 and held_shard not in data.train.urls
    assert data.train.info.num_samples == 48  # the epoch is the training shards' length
    held, note = choose_held_out(config, data, 0, 48)
    assert held.kind == "shards" and held.uids == dataset.uids[1][:5]
    assert held.excluded == frozenset()  # the shard is out of the stream already
    assert "5 images of 1 --val-shards" in note
    everything = DataConfig(shards=(str(dataset.shards[0]),), val_shards=(str(dataset.shards[0]),))
    with pytest.raises(ValueError, match="nothing is left to train on"):
        split_off_val_shards(everything, resolve_data(everything))
    run_dir = tmp_path / "run"
    pretrain(
        config_from_options(
            options(run_dir, dataset, val_shards=[held_shard], val_samples=5, steps=3)
        )
    )
    assert record_of(run_dir)["validation"]["uids"] == list(dataset.uids[1][:5])


def test_a_wrong_val_shard_is_named_as_one(dataset, tmp_path):
    config = DataConfig(
        shards=(str(dataset.info_path),), val_shards=(str(tmp_path / "gone.tar"),), retries=1
    )
    with pytest.raises(ValueError) as missing:
        split_off_val_shards(config, resolve_data(config))
    assert str(missing.value).startswith("--val-shards ") and "\n" not in str(missing.value)
    unreachable = DataConfig(
        shards=(str(dataset.info_path),), val_shards=("http://127.0.0.1:9/x.tar",), retries=1,
        retry_wait=0.01, val_samples=5,
    )  # fmt: skip
    data = split_off_val_shards(unreachable, resolve_data(unreachable))
    with pytest.raises(ShardUnreachableError) as refused:
        choose_held_out(unreachable, data, 0, 64)
    assert "--val-shards" in str(refused.value) and "--shards" not in str(refused.value).replace(
        "--val-shards", ""
    )


def test_a_resumed_run_validates_on_the_set_it_recorded(dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    pretrain(config_from_options(options(run_dir, dataset, steps=3, ckpt_every=3)))
    first = record_of(run_dir)["validation"]
    # another seed would sample another set: the recorded one is kept
    pretrain(config_from_options(options(run_dir, dataset, seed=8, resume="auto")))
    assert record_of(run_dir)["validation"] == first
    assert "the 6 held-out images the run recorded" in capsys.readouterr().out
    assert [r["step"] for r in metrics(run_dir) if "val_loss" in r] == [3, 6]
    with pytest.raises(ckpt.CheckpointError, match="--val-samples 6"):
        pretrain(
            config_from_options(options(run_dir, dataset, steps=9, val_samples=5, resume="auto"))
        )


def test_resume_with_validation_is_exact(dataset, tmp_path):
    """Killed at a validation step and resumed == one straight run: same weights, same
    validation losses, same stream position (the pass leaves the run's randomness alone)."""
    common = dict(steps=6, deterministic=True, model="mae_vit_tiny")  # random masking
    straight = pretrain(config_from_options(options(tmp_path / "a", dataset, **common)))
    pretrain(config_from_options(options(tmp_path / "b", dataset, stop_step=3, **common)))
    resumed = pretrain(
        config_from_options(options(tmp_path / "b", dataset, resume="auto", **common))
    )
    a, b = ckpt.load(straight.checkpoint), ckpt.load(resumed.checkpoint)
    for name, tensor in a["model"].items():
        assert torch.allclose(tensor, b["model"][name], atol=1e-6, rtol=0), name
    assert a["ranks"][0]["data"] == b["ranks"][0]["data"]
    assert a["record"]["validation"] == b["record"]["validation"]
    losses = [
        [(r["step"], r["val_loss"], r["val_common_loss"]) for r in metrics(run) if "val_loss" in r]
        for run in (tmp_path / "a", tmp_path / "b")
    ]
    assert [step for step, *_ in losses[0]] == [3, 6]
    for (_, *x), (_, *y) in zip(*losses, strict=True):
        assert x == pytest.approx(y, abs=1e-6)


def test_a_recorded_image_gone_from_its_shard_is_one_line(dataset):
    config = DataConfig(shards=(str(dataset.info_path),))
    urls = resolve_data(config).urls
    shard = "640x512/shard-000000.tar"
    gone = HeldOut("sample", (shard, shard), (dataset.uids[0][0], "no-such-uid"))
    with pytest.raises(ValueError, match=r"1 held-out image\(s\) are not in their shards"):
        read_held_out(gone, urls, config, (32, 32))
    elsewhere = HeldOut("sample", ("other/shard-000009.tar",), ("x",))
    with pytest.raises(ValueError, match="is not among the shards given"):
        read_held_out(elsewhere, urls, config, (32, 32))


@pytest.mark.parametrize(
    "recorded",
    [
        None,
        "uids",
        {"kind": "guess", "shards": ["a"], "uids": ["b"]},
        {"kind": "sample", "shards": ["a", "b"], "uids": ["b"]},
        {"kind": "sample", "shards": [], "uids": []},
        {"kind": "sample", "shards": [1], "uids": ["b"]},
    ],
)
def test_a_record_without_a_usable_set_gives_none(recorded):
    assert HeldOut.from_dict(recorded) is None


def test_centre_crop_keeps_the_middle_at_the_output_aspect():
    frame = np.zeros((40, 100), np.uint8)
    frame[:, 30:70] = 200  # the centred 40x40 square
    crop = centre_crop(frame, (16, 16))
    assert crop.shape == (16, 16) and crop.dtype == np.uint8 and crop.min() == 200
    raw = np.linspace(7000, 13000, 48 * 48).reshape(48, 48).astype(np.uint16)
    stretched = centre_crop(raw, (24, 24))
    assert stretched.dtype == np.uint8 and stretched.max() > 200 and stretched.min() < 50


def test_validation_due_every_n_steps_and_at_the_end():
    assert [s for s in range(1, 11) if validation_due(s, 10, 4)] == [4, 8, 10]
    assert [s for s in range(1, 11) if validation_due(s, 10, 0)] == [10]


# ---------------------------------------------------------------- the losses


def test_the_same_masks_every_pass_and_the_run_rng_untouched():
    model = create_model("mae_vit_tiny", img_size=32)  # random masking
    validator = Validator(random_images(6), model.config, batch_size=4)
    state = torch.get_rng_state()
    first = validator.evaluate(model, None, 1)
    assert torch.equal(torch.get_rng_state(), state)
    second = validator.evaluate(model, None, 2)
    assert (first.loss, first.common_loss) == (second.loss, second.common_loss)
    assert model.training  # left as it was found


def test_losses_are_the_own_objective_and_the_all_patch_error():
    model = create_model("dugi_mae_tiny", img_size=32).eval()  # entropy masking
    images = random_images(6)
    result = Validator(images, model.config, batch_size=6).evaluate(model, None, 1)
    x = normalise(images, 1)
    with torch.no_grad():
        own, _, mask = model(x, images)  # deterministic: the model's own masks
        validator = Validator(images, model.config, batch_size=6)
        _, pred, _ = model(x, images, validator.common)
    target = model.patchify(x)  # [N, L, p*p]
    all_patches = ((pred - target) ** 2).mean()
    assert result.loss == pytest.approx(own.item(), rel=1e-5)
    assert result.common_loss == pytest.approx(all_patches.item(), rel=1e-5)
    assert mask.float().mean().item() == pytest.approx(0.75, abs=0.02)
    # the batch size of the pass does not change the numbers
    chunked = Validator(images, model.config, batch_size=4).evaluate(model, None, 1)
    assert chunked.loss == pytest.approx(result.loss, rel=1e-5)
    assert chunked.common_loss == pytest.approx(result.common_loss, rel=1e-5)


def test_every_model_gets_the_same_common_mask():
    images = random_images(5)
    validators = [
        Validator(images, create_model(name, img_size=32).config, batch_size=2)
        for name in ("mae_vit_tiny", "infmae_tiny", "dugi_mae_tiny")
    ]
    masks = [v.common.mask for v in validators]
    assert all(torch.equal(masks[0], m) for m in masks[1:])
    assert masks[0].mean().item() == pytest.approx(COMMON_MASK_RATIO, abs=0.02)
    # MAE's random masking at the common ratio: its own masks are the common ones (one pass)
    assert validators[0].shared_pass and not validators[2].shared_pass
    other_ratio = Validator(
        images, create_model("mae_vit_tiny", img_size=32, mask_ratio=0.6).config, 2
    )
    assert not other_ratio.shared_pass
    patches = other_ratio.own.mask.shape[1]  # 4 at 32 px: floor(0.6 x 4) = 2 masked
    assert other_ratio.own.mask.sum(1).tolist() == [int(0.6 * patches)] * 5


def test_an_undecodable_held_out_image_is_one_line(tmp_path):
    shard = tmp_path / "bin" / "bad.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        payload = b"not a png at all"
        info = tarfile.TarInfo("u1.png")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    held = HeldOut("shards", ("bin/bad.tar",), ("u1",))
    with pytest.raises(ValueError, match="held-out image bin/bad.tar:u1 cannot be decoded"):
        read_held_out(held, [str(shard)], DataConfig(), (32, 32))


@pytest.mark.slow
def test_two_ranks_leave_out_the_same_set_and_rank_0_validates(tmp_path):
    dataset = make_dataset(tmp_path / "ds", num_shards=4, per_shard=8)
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "pretrain",
        "--shards", str(dataset.root), "--model", "mae_vit_tiny", "--out", str(out),
        "--steps", "4", "--batch-size", "4", "--workers", "1", "--shuffle-buffer", "8",
        "--shuffle-initial", "4", "--lr", "1e-3", "--device", "cpu", "--no-progress",
        "--log-every", "1", "--ckpt-every", "4", "--val-samples", "3", "--val-every", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("validation at step") == 2  # rank 0 only, steps 2 and 4
    assert [r["step"] for r in metrics(out) if "val_loss" in r] == [2, 4]
    state = ckpt.load(ckpt.latest_checkpoint(out))
    digests = [rank["param_sha256"] for rank in state["ranks"]]
    assert digests[0] == digests[1] and state["record"]["validation"]["samples"] == 3
