"""`inf590k eval`: encoders side by side, cells resumed, protocols kept, results that agree."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main
from inf590k.synth import SynthConfig, synthesize
from pretrain.models import create_model, export_encoder
from pretrain.probe import compare
from pretrain.probe.compare import (
    EvalConfig,
    EvalError,
    parse_encoders,
    run_eval,
)
from pretrain.probe.results import paired_difference, results_chart

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SMALL = dict(steps=2, img_size=64, batch_size=2, head_dim=16, device="cpu")


@pytest.fixture(scope="module")
def m3fd(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("m3fd")
    synthesize(SynthConfig(layout="m3fd", out=root, count=12, width=96, height=64))
    return root


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    folders = {}
    for seed, name in ((1, "dugi"), (2, "other")):
        torch.manual_seed(seed)
        folders[name] = tmp_path_factory.mktemp(name)
        export_encoder(create_model("dugi_mae_tiny"), folders[name])
    return folders


def detect_config(m3fd: Path, exports: dict[str, Path], out: Path, **options) -> EvalConfig:
    values = dict(
        encoders=parse_encoders(["scratch", f"dugi={exports['dugi']}"]),
        task="detect",
        data=m3fd,
        out=out,
        seeds=2,
        arms=("finetune",),
        **SMALL,
    )
    return EvalConfig(**(values | options))


@pytest.fixture
def counted(monkeypatch) -> list[tuple]:
    """The cells that really train (not read back)."""
    calls: list[tuple] = []
    train = compare._train_and_evaluate

    def counting(config, spec, data, out):
        calls.append((out.parent.parent.name, out.parent.name, config.seed))
        return train(config, spec, data, out)

    monkeypatch.setattr(compare, "_train_and_evaluate", counting)
    return calls


def markdown_rows(text: str, heading: str) -> dict[str, list[str]]:
    """The first table after `heading`: encoder -> its cells."""
    section = text.split(heading, 1)[1]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| encoder"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
        elif rows and not line.startswith("|"):
            break
    return rows


def test_eval_writes_tables_and_chart_that_equal_its_json(
    m3fd: Path, exports: dict, tmp_path: Path, counted: list
) -> None:
    lines: list[str] = []
    summary = run_eval(detect_config(m3fd, exports, tmp_path), log=lines.append)
    assert len(counted) == 4 and sum("s)" in line for line in lines[1:]) == 4
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["baseline"] == "scratch" and results["timing"]["cells"] == 4
    block = results["arms"]["finetune"]
    assert list(block["encoders"]) == ["scratch", "dugi"] and list(block["differences"]) == ["dugi"]
    for name in ("scratch", "dugi"):
        values = [c["metrics"]["map"] for c in results["cells"] if c["encoder"] == name]
        assert block["encoders"][name]["map"]["mean"] == pytest.approx(sum(values) / 2)
    # the table: the json's numbers, in percent, mean ± std
    text = (tmp_path / "results.md").read_text()
    assert text in str(summary) + "\n" or text.rstrip() in str(summary)
    rows = markdown_rows(text, "## Fine-tuned encoder")
    for name, metrics in block["encoders"].items():
        entry = metrics["map"]
        assert rows[name][0] == f"{entry['mean'] * 100:.1f} ± {entry['std'] * 100:.1f}"
        assert rows[name][-1] == "2"
    diff = block["differences"]["dugi"]["map"]
    diffs = markdown_rows(text, "Difference to scratch")
    assert diffs["dugi"][0] == f"{diff['mean'] * 100:+.1f} ± {diff['std'] * 100:.1f}"
    assert f"dugi vs scratch, mAP: {diffs['dugi'][0]} over 2 seed(s): {diff['verdict']}." in text
    ap50 = block["differences"]["dugi"]["ap50"]
    assert f"dugi vs scratch, AP50: {diffs['dugi'][1]} over 2 seed(s): {ap50['verdict']}." in text
    # the chart: one bar per encoder and headline metric, heights and error bars from the json
    ax = results_chart(results).axes[0]
    bars = [
        patch
        for container in ax.containers
        if hasattr(container, "patches")
        for patch in container.patches
    ]
    expected = [
        block["encoders"][n][k]["mean"] * 100 for n in ("scratch", "dugi") for k in ("map", "ap50")
    ]
    assert [b.get_height() for b in bars] == pytest.approx(expected)
    errors = [
        seg[1][1] - seg[0][1]
        for c in ax.containers
        if hasattr(c, "errorbar")
        for seg in c.errorbar.lines[2][0].get_segments()
    ]
    stds = [
        block["encoders"][n][k]["std"] * 100 * 2
        for n in ("scratch", "dugi")
        for k in ("map", "ap50")
    ]
    assert errors == pytest.approx(stds)
    assert (tmp_path / "results.png").stat().st_size > 10_000


def test_a_rerun_skips_finished_cells_and_runs_the_rest(
    m3fd: Path, exports: dict, tmp_path: Path, counted: list
) -> None:
    run_eval(detect_config(m3fd, exports, tmp_path, seeds=1), log=lambda _: None)
    assert sorted(counted) == [("finetune", "dugi", 0), ("finetune", "scratch", 0)]
    first = (tmp_path / "cells/finetune/dugi/seed0/metrics.json").read_text()
    # an interrupted cell (no metrics.json yet) is run again, as is every new seed and arm
    (tmp_path / "cells/finetune/scratch/seed0/metrics.json").unlink()
    counted.clear()
    lines: list[str] = []
    run_eval(
        detect_config(m3fd, exports, tmp_path, seeds=2, arms=("finetune", "frozen")),
        log=lines.append,
    )
    assert ("finetune", "dugi", 0) not in counted and len(counted) == 7
    assert (tmp_path / "cells/finetune/dugi/seed0/metrics.json").read_text() == first
    assert sum("done before, skipped" in line for line in lines) == 1
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["timing"] == dict(
        cells=8,
        ran=7,
        seconds_per_cell=pytest.approx(sum(c["seconds"] for c in results["cells"]) / 8),
    )
    frozen = results["arms"]["frozen"]["encoders"]
    assert frozen["dugi"]["map"]["n"] == 2


def test_a_changed_protocol_or_encoder_is_refused_in_one_line(
    m3fd: Path, exports: dict, tmp_path: Path
) -> None:
    run_eval(detect_config(m3fd, exports, tmp_path, seeds=1), log=lambda _: None)
    with pytest.raises(EvalError, match=r"another protocol \(steps: 2 there, 3 now\)") as caught:
        run_eval(detect_config(m3fd, exports, tmp_path, seeds=1, steps=3), log=lambda _: None)
    assert "\n" not in str(caught.value)
    with pytest.raises(EvalError, match="img_size: 64 there, 96 now"):
        run_eval(detect_config(m3fd, exports, tmp_path, img_size=96), log=lambda _: None)
    renamed = parse_encoders(["scratch", f"dugi={exports['other']}"])
    with pytest.raises(EvalError, match="--encoder dugi is not the encoder of the cells"):
        run_eval(detect_config(m3fd, exports, tmp_path, encoders=renamed), log=lambda _: None)
    # the data moved elsewhere: the same images, the same protocol, nothing re-run
    import shutil

    moved = shutil.copytree(m3fd, tmp_path.parent / f"{tmp_path.name}-moved")
    lines: list[str] = []
    run_eval(detect_config(moved, exports, tmp_path, seeds=1), log=lines.append)
    assert sum("done before" in line for line in lines) == 2
    # another encoder under a new name joins the same protocol
    added = parse_encoders(["scratch", f"dugi={exports['dugi']}", f"other={exports['other']}"])
    run_eval(detect_config(m3fd, exports, tmp_path, encoders=added, seeds=1), log=lambda _: None)
    protocol = json.loads((tmp_path / "protocol.json").read_text())
    assert list(protocol["encoders"]) == ["scratch", "dugi", "other"]


def test_paired_differences_say_when_they_are_inside_the_seeds_spread() -> None:
    inside = paired_difference({0: 0.50, 1: 0.48, 2: 0.53}, {0: 0.49, 1: 0.50, 2: 0.50})
    assert inside["inside_spread"] is True and "cannot tell the two apart" in inside["verdict"]
    assert inside["mean"] == pytest.approx(0.00666, abs=1e-4) and inside["n"] == 3
    clear = paired_difference({0: 0.60, 1: 0.62, 2: 0.61}, {0: 0.50, 1: 0.51, 2: 0.50})
    assert clear["inside_spread"] is False and clear["agree"] == 3
    assert clear["verdict"] == "above it by more than the seeds' spread (3 of 3 seeds agree)"
    below = paired_difference({0: 0.40, 1: 0.41}, {0: 0.50, 1: 0.50})
    assert below["verdict"].startswith("below it")
    one = paired_difference({0: 0.6}, {0: 0.5, 1: 0.4})
    assert one["inside_spread"] is None and one["std"] is None and "one seed" in one["verdict"]
    assert paired_difference({3: 0.6}, {0: 0.5}) is None  # no seed in common


def test_small_target_eval_with_a_released_unip_checkpoint(tmp_path: Path) -> None:
    import argparse

    import timm

    synthesize(SynthConfig(layout="irstd1k", out=tmp_path / "data", count=8, width=64, height=64))
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, num_classes=0)
    state = {k: v for k, v in vit.state_dict().items() if not k.startswith("head")}
    released = tmp_path / "unip_vit_tiny.pth"
    torch.save(
        {"model": state, "args": argparse.Namespace(model="unip_vit_tiny_patch16")}, released
    )
    config = EvalConfig(
        encoders=parse_encoders(["scratch:dugi_mae_tiny", f"unip={released}"]),
        task="small-target",
        data=tmp_path / "data",
        out=tmp_path / "eval",
        seeds=1,
        arms=("frozen",),
        **SMALL,
    )
    summary = run_eval(config, log=lambda _: None)
    results = summary.results
    assert results["baseline"] == "scratch"
    assert results["protocol"]["encoders"]["scratch"]["architecture"] == "dugi_mae_tiny"
    assert results["protocol"]["encoders"]["unip"]["architecture"] == "vit_base_patch16_224"
    exported = list((tmp_path / "eval" / "encoders" / "unip").glob("*/unip_vit_tiny-export"))
    assert len(exported) == 1 and (exported[0] / "config.json").is_file()
    assert "| encoder | IoU | nIoU | Pd | Fa (1e-6) | seeds |" in str(summary)
    assert set(results["arms"]["frozen"]["encoders"]["unip"]) == {"iou", "niou", "pd", "fa"}
    # the same name for another file is another encoder: refused, not mixed in
    torch.save({"model": {k: v + 1 for k, v in state.items()}}, released)
    with pytest.raises(EvalError, match="--encoder unip is not the encoder of the cells"):
        run_eval(config, log=lambda _: None)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--encoder", "a=x", "--encoder", "a=y"], "given twice"),
        (["--encoder", "bad name=x"], "write NAME=PATH"),
        (["--encoder", "gone=/no/such/export"], "no such file or folder"),
        (["--encoder", "scratch", "--num-heads", "other=4"], "no --encoder of that name"),
        (["--encoder", "scratch", "--num-heads", "scratch=x"], "write NAME=N"),
        (["--encoder", "scratch", "--seeds", "0"], "--seeds must be at least 1"),
        (
            ["--encoder", "scratch", "--layout", "sirst"],
            "--task detect does not fit --layout sirst",
        ),
    ],
)
def test_bad_eval_options_fail_in_one_line(
    m3fd: Path, tmp_path: Path, args: list, message: str
) -> None:
    result = CliRunner().invoke(
        main,
        ["eval", "--task", "detect", "--data", str(m3fd), "--out", str(tmp_path / "out"), *args],
    )
    assert result.exit_code == 1 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_eval_command_prints_cells_with_their_timing(
    m3fd: Path, exports: dict, tmp_path: Path
) -> None:
    args = [
        "eval",
        "--encoder",
        "scratch",
        "--encoder",
        f"dugi={exports['dugi']}",
        "--task",
        "detect",
        "--data",
        str(m3fd),
        "--out",
        str(tmp_path),
        "--seeds",
        "1",
        "--arm",
        "finetune",
        "--steps",
        "1",
        "--img-size",
        "64",
        "--batch-size",
        "2",
        "--head-dim",
        "16",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    opening = result.output.splitlines()[0]  # says the threads beside the loader workers
    assert opening.startswith("eval detect on m3fd: ") and "as --threads asks)" in opening
    assert "; 1 torch thread, 0 loader workers (" in opening
    assert re.search(r"\[1/2\] finetune scratch seed 0: mAP [\d.]+ .*\([\d.]+ s\)", result.output)
    assert "eval: 2 cells (2 run now, " in result.output and "results.md" in result.output
    again = CliRunner().invoke(main, args)
    assert again.output.count("done before, skipped") == 2 and "(0 run now" in again.output
