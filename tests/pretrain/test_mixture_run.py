"""A run with --mix / --mix-bin: the realised shares in its closing line, record and card;
a resume keeps the mixture or refuses another one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pretrain import checkpoint as ckpt
from pretrain.checkpoint import export_checkpoint
from pretrain.config import config_from_options
from pretrain.hub import training_lines  # what publish-model puts on the Hub card
from pretrain.resume import kept_mixture
from pretrain.train import pretrain
from tests.shardkit import make_mixed_dataset

# 48 samples of a, 16 of b in bin 32x32; 16 of b in bin 48x48
LAYOUT = [("32x32", {"a": 24, "b": 8}), ("32x32", {"a": 24}), ("48x48", {"b": 16})]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return make_mixed_dataset(tmp_path_factory.mktemp("mixed"), LAYOUT, height=32, width=32)


def options(run_dir: Path, mixed, **overrides) -> dict:
    base = dict(
        shards=[str(mixed.root)], batch_size=8, workers=0, shuffle_buffer=16, shuffle_initial=4,
        retries=1, retry_wait=0.01, model="mae_vit_tiny", model_args=["img_size=32"],
        out=str(run_dir), steps=6, epochs=10, warmup_epochs=1, lr=1e-3, log_every=3,
        ckpt_every=3, progress=False, seed=3,
    )  # fmt: skip
    return {**base, **overrides}


def test_a_mixed_run_records_and_prints_its_realised_shares(mixed, tmp_path):
    run_dir = tmp_path / "run"
    result = pretrain(config_from_options(options(run_dir, mixed, mix=["a=1", "b=3"])))
    assert "; drawn: sources a " in str(result) and "bins 32x32" in str(result)
    record = ckpt.load(result.checkpoint)["record"]["mixture"]
    assert record["weights"]["sources"] == {"a": 0.25, "b": 0.75}
    assert sum(record["drawn"]["sources"].values()) == 6 * 8  # every sample trained on
    assert record["realised"]["sources"]["b"] > 0.5  # 25% of the stored samples, 3x weighted
    card = (export_checkpoint(result.checkpoint, tmp_path / "export") / "README.md").read_text()
    line = next(row for row in card.splitlines() if row.startswith("- data mixture:"))
    assert "--mix a 25.0%, b 75.0%" in line and "realised: sources a" in line
    assert any(row.startswith("- data mixture:") for row in training_lines(tmp_path / "export"))
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["pretraining_data"]["mixture"]["drawn"] == record["drawn"]


def test_resume_keeps_the_mixture_or_refuses_another(mixed, tmp_path):
    run_dir = tmp_path / "run"
    pretrain(config_from_options(options(run_dir, mixed, steps=3, mix_bin=["32x32=1", "48x48=1"])))
    with pytest.raises(ckpt.CheckpointError) as refused:
        pretrain(
            config_from_options(
                options(run_dir, mixed, mix_bin=["32x32=1", "48x48=2"], resume="auto")
            )
        )
    assert "\n" not in str(refused.value) and "--mix-bin 32x32=1,48x48=1" in str(refused.value)
    same = options(run_dir, mixed, mix_bin=["32x32=2,48x48=2"], steps=4, resume="auto")
    assert pretrain(config_from_options(same)).step == 4  # the same shares at another scale
    kept = pretrain(config_from_options(options(run_dir, mixed, resume="auto")))  # none given
    state = ckpt.load(kept.checkpoint)
    assert state["config"]["data"]["mix_bin"]  # taken over from the checkpoint
    assert state["record"]["mixture"]["weights"]["bins"] == {"32x32": 0.5, "48x48": 0.5}
    assert sum(state["record"]["mixture"]["drawn"]["bins"].values()) == 6 * 8  # counts go on
    finished = pretrain(config_from_options(options(run_dir, mixed, resume="auto")))
    assert finished.finished_before and finished.drawn.startswith("sources ")


def test_unknown_source_is_one_line_before_training(mixed, tmp_path):
    with pytest.raises(ValueError) as refused:
        pretrain(config_from_options(options(tmp_path / "run", mixed, mix=["flir=1"])))
    assert "\n" not in str(refused.value) and "no such source" in str(refused.value)
    assert not (tmp_path / "run").exists()


def test_a_name_weighted_zero_is_the_mixture_without_it(mixed, tmp_path):
    state = {"config": {"data": {"mix": ["a=1"], "mix_bin": []}}}
    zero = config_from_options(options(tmp_path / "run", mixed, mix=["a=1,b=0"]))
    assert kept_mixture(zero, tmp_path / "ckpt.pt", state).data.mix == ("a=1,b=0",)
    other = config_from_options(options(tmp_path / "run", mixed, mix=["a=1,b=1"]))
    with pytest.raises(ckpt.CheckpointError, match="--mix a=1"):
        kept_mixture(other, tmp_path / "ckpt.pt", state)


def test_a_run_drawn_as_stored_refuses_a_mixture_on_resume(mixed, tmp_path):
    run_dir = tmp_path / "run"
    pretrain(config_from_options(options(run_dir, mixed, steps=3)))
    for weights in (dict(mix=["a=1", "b=1"]), dict(mix_bin=["48x48=1"])):
        with pytest.raises(ckpt.CheckpointError) as refused:
            pretrain(config_from_options(options(run_dir, mixed, resume="auto", **weights)))
        assert "\n" not in str(refused.value) and "trained without --mix" in str(refused.value)
    resumed = pretrain(config_from_options(options(run_dir, mixed, steps=4, resume="auto")))
    state = ckpt.load(resumed.checkpoint)
    assert state["record"]["mixture"]["weights"] == {"sources": {}, "bins": {}}
