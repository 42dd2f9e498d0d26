"""Pretraining loop: the paper's recipe, DDP via torchrun, exact resume, sync-free steps.

The loop reads the loss, learning rate and counters on the host only at log steps; NaN/inf
steps are skipped on the device (the fused AdamW kernel takes a `found_inf` flag) and counted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from pretrain import checkpoint as ckpt
from pretrain import distributed
from pretrain.config import (
    PretrainConfig,
    parse_model_args,
)
from pretrain.curves import CurvesError, save_run_curves
from pretrain.data import (
    describe_realised,
    epoch_length,
    loader_for,
    mixture_for,
    realised,
    resolve_data,
    usable_cores,
)
from pretrain.distributed import peak_flops, resolve_precision, seed_everything
from pretrain.models import create_model
from pretrain.models.pixels import normalise
from pretrain.models.reference import init_from_reference
from pretrain.provenance import (
    describe_data,
    weights_licence,
)
from pretrain.resume import (
    check_resume_options,
    drawn_of,
    kept_mixture,
    load_resume_state,
    rank_data_state,
    restore_training_state,
    saved_config,
)
from pretrain.runs import (
    Interval,
    MetricsLog,
    RunExistsError,
    TrainingDiverged,
    TrainResult,
    holds_run,
    log_line,
    read_metrics,
    say,
    truncate_metrics,
)
from pretrain.schedule import (
    build_optimizer,
    plan_schedule,
    schedule_history,
    segment,
)
from pretrain.threads import local_processes, plan_threads
from pretrain.validation import (
    HeldOut,
    Validator,
    choose_held_out,
    split_off_val_shards,
    validation_due,
)
from pretrain.visualize import save_grid

log = logging.getLogger(__name__)


class Trainer:
    """Holds the pieces of one run; `fit()` runs it from its start (or resumed) step."""

    def __init__(self, config: PretrainConfig, model: nn.Module | None = None) -> None:
        self.config = config
        run = config.run
        self.run_dir = Path(run.out)
        earlier = holds_run(self.run_dir)  # before anything starts: never touch another run
        if earlier and not run.resume:
            raise RunExistsError(
                f"--out {self.run_dir} holds a run ({earlier}): continue it with --resume auto, "
                "or choose another --out"
            )
        self.env = distributed.setup(run.device, run.dist_backend)
        self.device = self.env.device
        workers = min(config.data.workers, usable_cores())  # those the loader starts
        self.threads = plan_threads(workers, run.threads, local_processes())
        torch.set_num_threads(self.threads.threads)  # pretrain() restores the caller's count
        if self.env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if run.deterministic:
            torch.use_deterministic_algorithms(True)
        seed_everything(run.seed)  # same init on every rank (DDP also broadcasts rank 0's)
        if model is None:
            model = create_model(run.model, **parse_model_args(run.model_args))
            if run.init:
                model = init_from_reference(run.init, run.init_kind, model.config)
        self.model = model.to(self.device)
        self.model_config = getattr(model, "config", None)
        self.in_chans = getattr(self.model_config, "in_chans", 1)
        self.image_hw = tuple(getattr(self.model_config, "image_hw", (224, 224)))
        seed_everything(run.seed + 1000 * self.env.rank)  # per-rank streams from here on

        # URLs and index, read once a run; --val-shards are not trained on
        self.split = split_off_val_shards(config.data, resolve_data(config.data))
        self.resolved = self.split.train
        self.urls, self.info = self.resolved.urls, self.resolved.info
        self.schedule = plan_schedule(
            config.optim,
            config.data.batch_size,
            self.env.world_size,
            epoch_length(  # as many loader processes as the loader starts (cores cap them)
                config.data,
                self.info,
                self.env.world_size,
                min(config.data.workers, usable_cores()),
            ),
        )
        self.optimizer, self.scheduler = build_optimizer(model, config.optim, self.schedule)
        self.schedules = [segment(0, self.schedule)]  # the lengths the run had
        self.say(f"pretrain on {self.device}: {self.threads}")  # the opening line
        self.amp_dtype = resolve_precision(run.precision, self.device)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.peak = peak_flops(self.device, run.peak_tflops)
        self.flops_per_image = (
            float(model.flops_per_image()) if hasattr(model, "flops_per_image") else None
        )
        self.step = 0
        self.images_seen = 0
        self.nan_skips = torch.zeros((), device=self.device)
        self.resumed_from: Path | None = None
        self.drawn: dict[str, dict[str, int]] = {}  # samples trained on, all ranks (main)
        self.resumed_record: dict[str, Any] | None = None  # the resumed checkpoint's record
        self.passed_over: list[str] = []  # damaged checkpoints --resume auto did not use
        data_state = self._maybe_resume()
        if run.resume and self.env.is_main:
            truncate_metrics(self.run_dir / "metrics.jsonl", self.step)
        self.data = (
            describe_data(config, self.resolved) if self.env.is_main else None
        )
        self.mixture = mixture_for(self.config.data, self.urls, self.info)  # after resume
        if self.env.is_main:
            log.info("data mixture: %s", self.mixture.describe())
        self.held_out, self.validator = self._setup_validation()
        self.loader, self.tracker = loader_for(
            self.config.data,
            self.image_hw,
            seed=run.seed,
            rank=self.env.rank,
            world_size=self.env.world_size,
            pin_memory=self.device.type == "cuda",
            resume_state=data_state,
            urls=self.urls,
            info=self.info,
            mixture=self.mixture,
            exclude=self.held_out.excluded if self.held_out else frozenset(),
        )
        self.forward_model: nn.Module = self.model
        if self.env.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(self.model, device_ids=ids)
        if run.compile:
            self.forward_model = torch.compile(self.forward_model)
        self.metrics = MetricsLog(self.run_dir, run.tensorboard, self.env.is_main)

    # ------------------------------------------------------------------ checkpoints
    def _maybe_resume(self) -> dict[str, Any] | None:
        if not self.config.run.resume:
            return None
        found = load_resume_state(self.run_dir, self.config.run.resume, self.env.is_main)
        if found is None:
            if self.env.is_main:
                log.info("--resume auto: no checkpoint in %s, starting a new run", self.run_dir)
            return None
        path, state, self.passed_over = found
        end = self.schedule.total_steps
        if self.config.run.stop_step is not None:
            end = min(end, self.config.run.stop_step)
        self.config = kept_mixture(self.config, path, state)
        if int(state.get("step", 0)) < end:  # a finished run trains no more: nothing to change
            check_resume_options(path, state, self.config, self.model_config)
        counters, ranks = restore_training_state(
            path, state, self.model, self.optimizer, self.scaler
        )
        self.step = int(state["step"])
        self.resumed_from = path
        self.drawn = drawn_of(ranks) if self.env.is_main else {}
        record = state.get("record")
        self.resumed_record = record if isinstance(record, dict) else {}
        self.images_seen = int(counters["images"])
        self.nan_skips.fill_(float(counters["nan_skips"]))
        data_state = rank_data_state(ranks, self.env, self.step)
        if self.env.is_main:
            log.info("resumed %s at step %d", path, self.step)
        # the lr is a function of the options, not of the checkpoint: a longer run goes on
        # with the schedule of its new length, and the record keeps every length it had
        self.schedules, change = schedule_history(
            state, self.schedule, self.step, self.scheduler.lr_at(self.step)
        )
        if change:
            self.say(change)
        return data_state

    def say(self, line: str) -> None:
        """A line for the user, from the main rank only."""
        if self.env.is_main:
            say(line)

    def record(self) -> dict[str, Any]:
        """What the run did so far, for the checkpoint and the model card."""
        schedule, optim = self.schedule, self.config.optim
        data = self.data.as_dict() if self.data else None
        licence = weights_licence(self.data.sources if self.data else None)
        return {
            "lr": schedule.lr,
            "blr": schedule.lr * 256 / schedule.global_batch,
            "lr_given_as": "lr" if optim.lr is not None else "blr",
            "steps": self.step,
            "total_steps": schedule.total_steps,
            "warmup_steps": schedule.warmup_steps,
            "schedules": self.schedules,
            "images_seen": self.images_seen,
            "batch": {
                "per_process": self.config.data.batch_size,
                "world_size": self.env.world_size,
                "accum_steps": optim.accum_steps,
                "global": schedule.global_batch,
            },
            "data": data,
            "license": licence.as_dict(),
            "mixture": {
                "weights": self.mixture.as_dict(),  # shares asked for ({}: as stored)
                "drawn": self.drawn,  # samples trained on per source and per bin
                "realised": realised(self.drawn),
            },
            "validation": self.held_out.as_dict() if self.held_out else None,
        }

    def save(self) -> Path | None:
        rank_state = {
            "rng": ckpt.capture_rng(),
            "data": self.tracker.state(),
            "param_sha256": ckpt.parameter_digest(self.model),  # DDP consistency check
        }
        ranks = distributed.gather_objects(self.env, rank_state)
        path = None
        if self.env.is_main:
            self.drawn = drawn_of(ranks)
            state = {
                "format": ckpt.FORMAT_VERSION,
                "step": self.step,
                "model_name": self.config.run.model,
                "model_config": dataclasses.asdict(self.model_config) if self.model_config else {},
                "config": saved_config(self.config),
                "record": self.record(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ranks": ranks,
                "world_size": self.env.world_size,
                "counters": {"images": self.images_seen, "nan_skips": int(self.nan_skips.item())},
            }
            path = ckpt.save_atomic(state, ckpt.checkpoint_path(self.run_dir, self.step))
            ckpt.prune(self.run_dir, self.config.run.keep_last)
        distributed.barrier(self.env)
        return path

    # ------------------------------------------------------------------ steps
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self.loader

    def _micro_step(self, images: torch.Tensor, sync: bool, interval: Interval) -> None:
        pixels = images.to(self.device, non_blocking=True)  # uint8 crops: masking reads them
        x = normalise(pixels, self.in_chans)
        no_sync = (
            self.forward_model.no_sync
            if isinstance(self.forward_model, DistributedDataParallel) and not sync
            else contextlib.nullcontext
        )
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()  # a disabled autocast would still set its dtype
        )
        with no_sync():
            with autocast:
                loss, _, _ = self.forward_model(x, pixels)
            self.scaler.scale(loss / self.config.optim.accum_steps).backward()
        finite = torch.isfinite(loss.detach())
        interval.loss_sum += torch.where(finite, loss.detach().float(), 0.0)
        interval.loss_count += finite.float()

    def _optimizer_step(self) -> None:
        optim = self.config.optim
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if optim.clip_grad:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, optim.clip_grad)  # no host sync
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        # Grads are already all-reduced, so every rank sees the same norm and skips alike.
        found_inf = (~torch.isfinite(grad_norm)).float()
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.found_inf = found_inf  # fused AdamW skips the update on the device
            self.optimizer.step()
            self.optimizer.found_inf = None
        self.nan_skips += found_inf
        self.optimizer.zero_grad(set_to_none=True)

    def _log(
        self, interval: Interval, bar: tqdm | None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        nan_skips = int(self.nan_skips.item())
        epoch = (
            self.images_seen / self.schedule.samples_per_epoch
            if self.schedule.samples_per_epoch
            else None
        )
        record = interval.record(
            step=self.step,
            epoch=epoch,
            lr=self.optimizer.param_groups[0]["lr"],
            world_size=self.env.world_size,
            flops_per_image=self.flops_per_image if self.peak else None,
            peak_flops=self.peak,
            extra={"nan_skips": nan_skips, **self.tracker.totals(), **(extra or {})},
        )
        loss, images_per_s, mfu = record["loss"], record["images_per_s"], record["mfu"]
        self.metrics.write(record)
        if bar is None:
            self.say(log_line(record, self.schedule.total_steps))
        else:
            bar.set_postfix(
                loss="n/a" if loss is None else f"{loss:.4f}",
                img_s=f"{images_per_s:.0f}",
                mfu="n/a" if mfu is None else f"{100 * mfu:.1f}%",
                wait=f"{100 * record['data_wait']:.0f}%",
            )
        if nan_skips > self.config.run.max_nan_skips:
            raise TrainingDiverged(
                f"{nan_skips} steps had a NaN/inf loss or gradient (limit --max-nan-skips "
                f"{self.config.run.max_nan_skips}); lower --blr, set --clip-grad, or check the data"
            )
        return record

    def _setup_validation(self) -> tuple[HeldOut | None, Validator | None]:
        """The held-out set (every rank leaves it out) and its evaluator (main rank)."""
        held, note = choose_held_out(
            self.config.data,
            self.split,
            self.config.run.seed,
            self.schedule.samples_per_epoch,
            self.resumed_record,
        )
        if held is not None and not hasattr(self.model_config, "masking"):
            held, note = None, "validation off: the model is not a masked autoencoder of ours"
        if not self.env.is_main:
            return held, None
        every = f", every {self.config.run.val_every} steps and at the end" if held else ""
        tqdm.write(f"{note}{every}")
        validator = Validator.build(self.model, held, self.split, self.config.data) if held else None
        return held, validator

    def _validate(self, interval: Interval) -> dict[str, Any]:
        """One pass over the held-out set; its time is kept out of the interval's speed."""
        result = self.validator.evaluate(self.model, self.amp_dtype, self.step)
        interval.started += result.seconds
        tqdm.write(result.line())
        return result.record()

    def _draw_curves(self) -> None:
        """RUN/curves.png from the metrics logged so far."""
        with contextlib.suppress(CurvesError):  # nothing logged yet: no figure
            save_run_curves(self.run_dir, f"{self.run_dir.name} ({self.config.run.model})")

    def _visualize(self, images: torch.Tensor) -> None:
        path = self.run_dir / "vis" / f"step-{self.step:08d}.png"
        save_grid(self.model, images[:8].to(self.device), path)

    def _result(
        self, loss: float | None, checkpoint: Path | None, finished_before: bool = False
    ) -> TrainResult:
        totals = self.tracker.totals()
        return TrainResult(
            step=self.step,
            loss=loss,
            checkpoint=checkpoint,
            run_dir=self.run_dir,
            total_steps=self.schedule.total_steps,
            images_seen=self.images_seen,
            nan_skips=int(self.nan_skips.item()),
            bad_samples=totals["bad_samples"],
            shard_errors=totals["shard_errors"],
            finished_before=finished_before,
            is_main=self.env.is_main,
            resumed_from=self.resumed_from,
            passed_over=tuple(self.passed_over),
            drawn=describe_realised(self.drawn),
        )

    def _finished_result(self) -> TrainResult:
        """The run was over before this call: its last checkpoint and logged loss."""
        records = read_metrics(self.run_dir / "metrics.jsonl")
        loss = records[-1].get("loss") if records else None
        return self._result(loss, self.resumed_from, finished_before=True)

    def fit(self) -> TrainResult:
        run, optim = self.config.run, self.config.optim
        end = self.schedule.total_steps
        if run.stop_step is not None:
            end = min(end, run.stop_step)
        if self.resumed_from is not None and self.step >= end:
            self.metrics.close()
            return self._finished_result()
        new_interval = lambda: Interval.on(self.device)  # noqa: E731
        interval = new_interval()
        bar = (
            tqdm(total=end, initial=self.step, unit="step", dynamic_ncols=True)
            if run.progress and self.env.is_main
            else None
        )
        batches = self._batches()
        last_path, last_record = None, None
        self.model.train()
        try:
            while self.step < end:
                self.scheduler.step_update(self.step)
                for micro in range(optim.accum_steps):
                    waited = time.perf_counter()
                    images, position = next(batches)
                    interval.data_wait += time.perf_counter() - waited
                    self.tracker.update(position)
                    self._micro_step(images, micro == optim.accum_steps - 1, interval)
                    interval.images += images.shape[0]
                self._optimizer_step()
                self.step += 1
                self.images_seen += self.schedule.global_batch
                interval.steps += 1
                if bar is not None:
                    bar.update(1)
                val_step = self.validator is not None and validation_due(
                    self.step, end, run.val_every
                )
                if self.step % run.log_every == 0 or self.step == end or val_step:
                    extra = self._validate(interval) if val_step else None
                    last_record = self._log(interval, bar, extra)
                    interval = new_interval()
                # a grid every --vis-every steps, and always one of the last step
                vis_step = self.step == end or (run.vis_every and self.step % run.vis_every == 0)
                if vis_step and self.env.is_main:
                    self._visualize(images)
                    self._draw_curves()
                if self.step % run.ckpt_every == 0 or self.step == end:
                    last_path = self.save() or last_path
        finally:
            if bar is not None:
                bar.close()
            self.metrics.close()
        return self._result(last_record["loss"] if last_record else None, last_path)


def pretrain(config: PretrainConfig, model: nn.Module | None = None) -> TrainResult:
    """Run (or resume) pretraining; under torchrun every rank calls this."""
    out = Path(config.run.out)
    created = not out.exists()
    threads = torch.get_num_threads()
    try:
        trainer = Trainer(config, model)
        try:
            return trainer.fit()
        finally:
            distributed.cleanup(trainer.env)
    except BaseException:
        with contextlib.suppress(OSError):  # another rank may have removed it already
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # a failed run leaves no empty --out behind
        raise
    finally:
        torch.set_num_threads(threads)  # a library call leaves the caller's count as it was
