"""The demo's chain at reduced size: a broken stage anywhere fails here."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest
import timm
from click.testing import CliRunner

import pretrain  # noqa: F401  (registers the encoders with timm)
from cli import main


@pytest.mark.slow
def test_demo_chain_end_to_end_twice_on_one_folder(tmp_path, ir_samples):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--frames", "8", "--steps", "4", "--probe-steps", "3",
            "--extra", f"hit_uav={ir_samples / 'hit-uav'}",
            "--threads", "1"]  # shared test machines: the thread policy has its own tests
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "verify: OK" in result.output
    catalog = pq.read_table(out / "build" / "catalog")
    assert set(catalog.column("source").to_pylist()) == {"sirst", "llvip", "flir_adas_v2", "kaist", "hit_uav"}
    info = json.loads((out / "dataset" / "data" / "_info.json").read_text())
    assert info["splits"]["train"]["num_samples"] > 60
    bins = {name.split("/")[0] for name in info["splits"]["train"]["filenames"]}
    assert len(info["splits"]["train"]["filenames"]) == len(bins)  # one shard per bin
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 4
    assert (out / "reconstruction.png").stat().st_size > 0
    assert "pretrained" in result.output and "scratch" in result.output
    assert (out / "probe" / "comparison.json").exists()
    exported = next((out / "export").rglob("*.safetensors"))
    model = timm.create_model("dugi_mae_tiny", pretrained=True, features_only=True,
                              pretrained_cfg_overlay=dict(file=str(exported)))
    assert len(model.feature_info.channels()) == 4
    card = (out / "export" / "README.md").read_text()
    assert "127.0.0.1" not in card and "apache-2.0" not in card
    assert f"- data: {out / 'dataset'}" in card and "- learning rate: 0.0015 peak" in card
    weights = (out / "export" / "model.safetensors").read_bytes()

    again = CliRunner().invoke(main, args, catch_exceptions=False)  # the same folder again
    assert again.exit_code == 0, again.output
    assert f"the run in {out / 'run'} finished at step 4" in again.output
    rerun = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rerun == metrics  # each step once: nothing was trained or logged twice
    assert (out / "export" / "model.safetensors").read_bytes() == weights
    assert "demo results:" in again.output
    results = again.output.split("demo results:")[1]
    card_line = re.search(r"dataset card +(\S+)", results)
    assert card_line and card_line.group(1) == str(out / "dataset" / "README.md")

    # a longer --steps on the same folder trains on, at an lr above 0 on every new step
    longer = CliRunner().invoke(main, [*args, "--steps", "6"], catch_exceptions=False)
    assert longer.exit_code == 0, longer.output
    assert longer.output.startswith("demo on cpu: ")
    assert "resume: run extended from 4 to 6 steps at step 4" in longer.output
    extended = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in extended] == [4, 6]  # logged every 10 steps and at the end
    assert all(r["lr"] > 0 for r in extended if r["step"] > 4)
    assert (out / "export" / "model.safetensors").read_bytes() != weights  # the weights moved
    assert "- schedule: 4 steps planned, extended at step 4 to 6" in (
        out / "export" / "README.md"
    ).read_text()


def test_demo_refuses_no_steps_before_building_anything(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--steps", "0"])
    assert result.exit_code == 2 and "'--steps': 0 is not in the range x>=1" in result.output
    assert not out.exists()  # refused before a stage ran
