"""`inf590k demo`: the whole chain on synthetic data, no downloads."""

from __future__ import annotations

from pathlib import Path

import click

from cli.app import CliError, main
from cli.build import source_values_with_notes, write_dataset_card
from cli.options import THREADS, checked_device, opt, options, run_stage
from inf590k.build.ingest import IngestConfig
from inf590k.build.pipeline import BuildConfig, run_build
from inf590k.build.shard import ShardConfig
from inf590k.dataset.report import ReportConfig
from inf590k.dataset.report import report as run_report
from inf590k.dataset.serve import serve_folder
from inf590k.dataset.verify import VerifyConfig
from inf590k.dataset.verify import verify as run_verify
from inf590k.execution.units import ExecutionOptions
from inf590k.synth import SynthConfig, synthesize

DEMO_LAYOUTS = (("sirst", 0.5), ("llvip", 0.25), ("flir_adas_v2", 0.5), ("kaist", 0.5))
PRETRAIN_WORKERS = 1  # loader processes of the demo's pretraining
SHORT_RUN_STEPS = 5000  # below this, a masked autoencoder's reconstructions are not yet images


def closing_lines(steps: int, model: str) -> list[str]:
    """What a run of `steps` steps on the CPU can and cannot show, said after the results."""
    if steps >= SHORT_RUN_STEPS:
        return []
    return [
        "",
        f"what {steps} CPU steps of {model} show: every stage runs and joins the next (catalog, "
        "dedupe, bins, shards, verify, report, streaming over HTTP, checkpoint, export, probes), "
        "and the loss starts to fall.",
        f"what they cannot show: the reconstruction grid after {steps} steps is noise (masked "
        "patches come back as grey blur; a masked autoencoder needs thousands of steps and a "
        "real corpus before they look like the image), and the probes' pretrained-vs-scratch "
        "rows differ by chance, not by pretraining.",
        "for that: `inf590k pretrain` on a GPU with `dugi_mae_base` on the full corpus (README, "
        "Pretraining), then `inf590k eval` over several seeds.",
    ]


def demo_shard_config(build: Path, dataset: Path) -> ShardConfig:
    """The demo's shards: the default targets, so each resolution bin of a demo-sized build
    (a few hundred images, extra sources included) is one shard, however small a bin is."""
    return ShardConfig(build=build, out=dataset, execution=ExecutionOptions(progress=False))


@main.command()
@options(
    opt(
        "--out",
        default="demo-out",
        show_default=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Folder for everything the demo makes.",
    ),
    opt(
        "--extra",
        "extra_sources",
        multiple=True,
        metavar="ID=PATH",
        help="A real source to add to the synthetic ones (as for ingest). Repeatable.",
    ),
    opt("--frames", default=48, show_default=True, help="Synthetic infrared frames per layout."),
    opt(
        "--steps",
        default=60,
        show_default=True,
        type=click.IntRange(min=1),
        help="Pretraining steps of the tiny model.",
    ),
    opt("--model", default="dugi_mae_tiny", show_default=True, help="Model to pretrain."),
    opt(
        "--probe-steps",
        default=100,
        show_default=True,
        help="Fine-tuning steps of the small-target probe.",
    ),
    opt(
        "--detect-steps",
        default=80,
        show_default=True,
        help="Fine-tuning steps of the detection probe.",
    ),
    opt(
        "--device",
        default="cpu",
        show_default=True,
        help="Where the model parts run: cpu, auto, cuda (or gpu) or cuda:N.",
    ),
    THREADS,
)
def demo(
    out: Path,
    extra_sources: tuple[str, ...],
    frames: int,
    steps: int,
    model: str,
    probe_steps: int,
    detect_steps: int,
    device: str,
    threads: int | None,
) -> None:
    """The whole chain on synthetic data, no downloads: synth -> build -> verify -> report ->
    pretrain over local HTTP -> export -> reconstruction PNG -> small-target and detection probes."""
    # pretrain imports torch: only when the demo runs, not for every `inf590k` command
    from pretrain.checkpoint import export_checkpoint  # torch: when the command runs
    from pretrain.config import config_from_options  # torch: when the command runs
    from pretrain.threads import plan_threads, torch_threads  # torch: when the command runs
    from pretrain.train import pretrain  # torch: when the command runs
    from pretrain.visualize import visualize_checkpoint  # torch: when the command runs

    device = checked_device(device)
    # the opening line: pretraining reads with a loader worker, the probes decode in-process
    click.echo(
        f"demo on {device}: {plan_threads(PRETRAIN_WORKERS, threads)} to pretrain; "
        f"{plan_threads(0, threads)} to export, visualize and probe"
    )
    out.mkdir(parents=True, exist_ok=True)
    sources = []
    for index, (layout, scale) in enumerate(DEMO_LAYOUTS):
        target = out / "sources" / layout
        count = frames * 10 if layout == "kaist" else frames  # KAIST keeps every 10th frame
        click.echo(
            str(
                synthesize(
                    SynthConfig(layout=layout, out=target, count=count, seed=index, scale=scale)
                )
            )
        )
        sources.append((layout, target))
    sources.extend(source_values_with_notes(extra_sources))

    dataset = out / "dataset"
    built = run_stage(
        run_build,
        BuildConfig(
            ingest=IngestConfig(
                sources=tuple(sources),
                build=out / "build",
                execution=ExecutionOptions(progress=False),
            ),
            out=dataset,
            shard=demo_shard_config(out / "build", dataset),
        ),
    )
    write_dataset_card(dataset)
    for part in (built.ingest, built.dedupe, built.bins, built.shard, built):
        click.echo(str(part))
    checked = run_verify(VerifyConfig(dataset=dataset, execution=ExecutionOptions(progress=False)))
    click.echo(str(checked))
    if not checked.ok:
        raise CliError("the demo dataset failed verification: " + "; ".join(checked.problems))
    reported = run_report(ReportConfig(dataset=dataset))
    click.echo(str(reported))

    run_dir = out / "run"
    with serve_folder(dataset) as base_url:
        click.echo(f"pretrain: streaming the shards from {base_url}/data/_info.json")
        options = dict(
            shards=[f"{base_url}/data/_info.json"],
            model=model,
            out=str(run_dir),
            steps=steps,
            batch_size=16,
            workers=PRETRAIN_WORKERS,
            threads=threads,
            lr=1.5e-3,
            warmup_epochs=0.5,
            epochs=50,
            log_every=10,
            ckpt_every=steps,
            vis_every=steps,
            val_samples=max(4, frames // 3),  # held out: under 10% of the ~4 x frames kept
            val_every=20,
            keep_last=1,
            device=device,
            progress=False,
            resume="auto",
            data_name=str(dataset),
        )
        try:
            result = pretrain(config_from_options(options))
        except ValueError as err:
            raise CliError(str(err)) from err
    click.echo(str(result))
    images = sorted((out / "sources" / "sirst" / "images").glob("*.png"))[:4]
    with torch_threads(0, threads):
        exported = export_checkpoint(result.checkpoint, out / "export", device=device)
        grid = visualize_checkpoint(result.checkpoint, images, out / "reconstruction.png", device)
    from pretrain.probe import ProbeConfig  # torch: when the command runs
    from pretrain.probe import probe as run_probe  # torch: when the command runs

    # both probes: the exported encoder, a small head and batch, the demo's device and threads
    shared = dict(encoder=str(out / "export"), arch=model, batch_size=4, head_dim=32,
                  device=device, threads=threads)  # fmt: skip
    probed = run_probe(
        ProbeConfig(data=out / "sources" / "sirst", layout="sirst", out=out / "probe",
                    steps=probe_steps, img_size=128, lr=3e-3, **shared)  # fmt: skip
    )
    click.echo(str(probed))
    # detection row: synthetic M3FD frames (VOC boxes), kept out of the pretraining sources
    click.echo(
        str(
            synthesize(
                SynthConfig(
                    layout="m3fd",
                    out=out / "probe-data" / "m3fd",
                    count=frames,
                    width=192,
                    height=144,
                    seed=len(DEMO_LAYOUTS),
                )
            )
        )
    )
    detected = run_probe(
        ProbeConfig(data=out / "probe-data" / "m3fd", layout="m3fd", task="detect",
                    out=out / "probe-detect", steps=detect_steps, img_size=192, **shared)  # fmt: skip
    )
    click.echo(str(detected))

    click.echo("\ndemo results:")
    for label, path in (
        ("synthetic sources", out / "sources"),
        ("catalog (Parquet)", out / "build" / "catalog"),
        ("dedupe report", out / "build" / "dedupe"),
        ("dataset (WebDataset shards)", dataset),
        ("dataset card", dataset / "README.md"),
        ("dataset report", reported.out),
        ("training run (metrics, checkpoints)", run_dir),
        ("training curves (loss, validation, lr)", run_dir / "curves.png"),
        ("exported encoder (timm)", exported),
        ("reconstruction grid", grid),
        ("small-target probe (pretrained vs scratch)", out / "probe"),
        ("detection probe on synthetic M3FD", out / "probe-detect"),
    ):
        click.echo(f"  {label:<44} {path}")
    for line in closing_lines(steps, model):
        click.echo(line)
