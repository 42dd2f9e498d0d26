"""metrics.jsonl as curves: the figure's data read back, several runs on one figure, and one
line for a run that cannot be drawn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from pretrain.curves import (
    COMMON_LABEL,
    TRAIN_LABEL,
    VAL_LABEL,
    CurvesError,
    draw_curves,
    plot_runs,
    read_curves,
    run_label,
)


def write_run(folder: Path, steps: int = 10, val_every: int = 5, start_loss: float = 1.0) -> Path:
    """A run folder whose metrics.jsonl is a decaying loss, a warm-up then falling lr, and a
    validation pass every `val_every` steps (0: none)."""
    folder.mkdir(parents=True)
    lines = []
    for step in range(1, steps + 1):
        record = {"step": step, "loss": start_loss / step, "lr": min(step, 3) * 1e-4}
        if val_every and step % val_every == 0:
            record |= {"val_loss": 2 * start_loss / step, "val_common_loss": 3 * start_loss / step}
        lines.append(json.dumps(record))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def lines_by_label(axis) -> dict[str, tuple[list, list]]:
    return {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for line in axis.get_lines()
    }


def test_one_run_draws_its_losses_and_lr_against_steps(tmp_path):
    run = write_run(tmp_path / "dugi")
    figure = draw_curves([read_curves(run)])
    loss_axis, lr_axis = figure.axes
    drawn = lines_by_label(loss_axis)
    assert drawn[TRAIN_LABEL] == (list(range(1, 11)), [1.0 / s for s in range(1, 11)])
    assert drawn[VAL_LABEL] == ([5, 10], [2 / 5, 2 / 10])
    assert drawn[COMMON_LABEL] == ([5, 10], [3 / 5, 3 / 10])
    assert lines_by_label(lr_axis)["learning rate"][1][:4] == [min(s, 3) * 1e-4 for s in (1, 2, 3, 4)]
    # readable without the numbers: axes named, a legend, the loss on a log axis (it spans 10x)
    assert loss_axis.get_yscale() == "log" and lr_axis.get_yscale() == "linear"
    assert lr_axis.get_xlabel() == "step" and "loss" in loss_axis.get_ylabel()
    assert lr_axis.get_ylabel() == "learning rate"
    legend = [text.get_text() for text in loss_axis.get_legend().get_texts()]
    assert legend == [TRAIN_LABEL, VAL_LABEL, COMMON_LABEL]
    assert "dugi" in loss_axis.get_title()


def test_a_narrow_loss_range_stays_linear(tmp_path):
    run = tmp_path / "flat"
    run.mkdir()
    rows = [{"step": s, "loss": 0.30 - 0.01 * s, "lr": 1e-4} for s in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert draw_curves([read_curves(run)]).axes[0].get_yscale() == "linear"


def test_several_runs_share_one_figure_labelled_by_run(tmp_path):
    runs = [
        write_run(tmp_path / "mae", start_loss=1.0),
        write_run(tmp_path / "dugi", start_loss=0.5),
        write_run(tmp_path / "no-val", val_every=0),
    ]
    out, notes = plot_runs(runs, tmp_path / "ablation.png")
    assert out.stat().st_size > 0
    assert notes == [
        "no-val: no validation loss (the run had no held-out set: --val-samples or "
        "--val-shards); only its training loss is drawn"
    ]
    figure = draw_curves([read_curves(run) for run in runs])
    drawn = lines_by_label(figure.axes[0])
    assert drawn[f"dugi: {COMMON_LABEL}"] == ([5, 10], [1.5 / 5, 1.5 / 10])
    assert drawn[f"mae: {COMMON_LABEL}"] == ([5, 10], [3 / 5, 3 / 10])
    assert f"no-val: {COMMON_LABEL}" not in drawn and f"no-val: {TRAIN_LABEL}" in drawn
    colours = {line.get_label(): line.get_color() for line in figure.axes[0].get_lines()}
    assert colours[f"mae: {TRAIN_LABEL}"] == colours[f"mae: {COMMON_LABEL}"]
    assert colours[f"mae: {TRAIN_LABEL}"] != colours[f"dugi: {TRAIN_LABEL}"]
    assert len(figure.axes[1].get_lines()) == 3  # an lr curve per run


def test_two_runs_of_one_name_are_told_apart(tmp_path):
    runs = [write_run(tmp_path / "a" / "run"), write_run(tmp_path / "b" / "run")]
    out, _ = plot_runs(runs, tmp_path / "same.png")
    assert out.is_file()
    figure = draw_curves([read_curves(r, name=f"run [{r}]") for r in runs])
    assert len({line.get_label() for line in figure.axes[0].get_lines()}) == 6


def test_bad_metrics_are_one_line(tmp_path):
    with pytest.raises(CurvesError, match="no metrics.jsonl"):
        read_curves(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("\n")
    with pytest.raises(CurvesError, match="is empty: the run has not logged a step yet"):
        read_curves(empty)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metrics.jsonl").write_bytes(b'\x00\xff garbage\n[1, 2]\n{"step": "x"}\n')
    with pytest.raises(CurvesError, match=r"no readable record in 3 line\(s\)"):
        read_curves(corrupt)
    no_numbers = tmp_path / "no-numbers"
    no_numbers.mkdir()
    (no_numbers / "metrics.jsonl").write_text('{"step": 1, "loss": null, "lr": "high"}\n')
    with pytest.raises(CurvesError, match="hold no loss or lr"):
        read_curves(no_numbers)


def test_a_line_cut_by_a_kill_is_passed_over_and_said(tmp_path):
    run = write_run(tmp_path / "killed", steps=4, val_every=0)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "lo')
    curves = read_curves(run)
    assert [s for s, _ in curves.train] == [1, 2, 3, 4] and curves.skipped_lines == 1
    assert "killed: 1 unreadable line(s) of metrics.jsonl passed over" in curves.notes()


def test_plot_command(tmp_path):
    runs = [write_run(tmp_path / "mae"), write_run(tmp_path / "dugi", val_every=0)]
    result = CliRunner().invoke(main, ["plot", *map(str, runs), "--out", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "plot: dugi: no validation loss (the run had no held-out set: --val-samples or "
        "--val-shards); only its training loss is drawn",
        f"plot: wrote {tmp_path / 'a.png'}",
    ]
    single = CliRunner().invoke(main, ["plot", str(runs[0])])
    assert single.exit_code == 0 and (runs[0] / "curves.png").is_file()
    missing = CliRunner().invoke(main, ["plot", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [
        f"Error: {tmp_path / 'nowhere'}: no metrics.jsonl (not a pretraining run folder, or "
        "nothing logged yet)"
    ]


def test_a_run_is_labelled_with_its_model(tmp_path):
    from pretrain.config import config_from_options  # a real run: its checkpoint names the model
    from pretrain.train import pretrain
    from tests.shardkit import make_dataset

    dataset = make_dataset(tmp_path / "ds", num_shards=2, per_shard=8)
    run_dir = tmp_path / "gray-run"
    pretrain(
        config_from_options(
            dict(
                shards=[str(dataset.info_path)],
                batch_size=4,
                workers=0,
                shuffle_buffer=8,
                shuffle_initial=4,
                model="infmae_tiny",
                model_args=["img_size=32"],
                out=str(run_dir),
                steps=2,
                epochs=10,
                warmup_epochs=1,
                log_every=1,
                progress=False,
                val_samples=0,
            )  # fmt: skip
        )
    )
    assert run_label(run_dir) == "gray-run (infmae_tiny, gray masking)"
    assert read_curves(run_dir).name == "gray-run (infmae_tiny, gray masking)"
    assert (run_dir / "curves.png").is_file()  # drawn at the end of the run
    assert run_label(write_run(tmp_path / "bare")) == "bare"  # no checkpoint: its name
