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
from dataclasses import dataclass, field
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
    ResolvedData,
    add_counts,
    describe_realised,
    epoch_length,
    loader_for,
    mixture_for,
    parse_weights,
    realised,
    resolve_data,
    shares,
    usable_cores,
)
from pretrain.distributed import peak_flops, resolve_precision, seed_everything
from pretrain.models import create_model
from pretrain.models.pixels import normalise
from pretrain.models.reference import init_from_reference
from pretrain.provenance import (
    DataRecord,
    data_record,
    safe_shard_specs,
    weights_licence,
)
from pretrain.runs import (
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
    length_change,
    plan_schedule,
    recorded_schedules,
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


def describe_data(config: PretrainConfig, data: ResolvedData) -> DataRecord:
    """The data as records name it, with the sources its index lists (narrowed to the selected
    shards: the samples are theirs)."""
    info = data.info
    return data_record(
        config.data.shards,
        data.urls,
        info.num_samples if info else None,
        info.sources if info else (),
        config.run.data_name,
    )


# Options a resumed run must keep: they shape the optimisation or the model.
RESUME_FIXED = (
    ("optim", "lr"),
    ("optim", "blr"),
    ("optim", "weight_decay"),
    ("optim", "beta1"),
    ("optim", "beta2"),
    ("optim", "warmup_epochs"),
    ("optim", "min_lr"),
    ("optim", "accum_steps"),
    ("data", "batch_size"),
    ("data", "val_samples"),
    ("data", "val_shards"),
    ("run", "model"),
)


def _model_differences(saved: Any, model_config: Any) -> list[str]:
    """The model fields a resumed run would change, as `--model-args field=value` as recorded:
    the model configs are compared, not the strings that made them (`mask_ratio=.75` is
    `mask_ratio=0.75`)."""
    if not isinstance(saved, dict) or model_config is None:
        return []
    now = _plain(dataclasses.asdict(model_config))
    saved = _plain(saved)
    return [
        f"--model-args {name}={saved[name]}"
        for name in sorted(saved)
        if name in now and saved[name] != now[name]
    ]


@dataclass
class _Interval:
    """What the loop gathers between two log steps (device tensors + host timers)."""

    loss_sum: torch.Tensor
    loss_count: torch.Tensor
    started: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0
    images: int = 0
    steps: int = 0


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
        self.threads = plan_threads(config.data.workers, run.threads, local_processes())
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
    def _resume_candidates(self) -> list[Path]:
        resume = self.config.run.resume
        if resume == "auto":
            return list(reversed(ckpt.list_checkpoints(self.run_dir)))
        return [Path(resume)]

    def _load_resume_state(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest readable checkpoint; with --resume auto a damaged one is passed over."""
        candidates = self._resume_candidates()
        damaged: list[str] = []
        for path in candidates:
            try:
                state = ckpt.load(path)
            except ckpt.CheckpointError as err:
                if self.config.run.resume != "auto":
                    raise
                damaged.append(path.name)
                log.debug("%s", err)
                continue
            self.passed_over = damaged
            if damaged and self.env.is_main:
                log.warning(
                    "--resume auto: %s damaged, resuming from the previous checkpoint %s",
                    ", ".join(damaged),
                    path.name,
                )
            return path, state
        if damaged:
            raise ckpt.CheckpointError(
                f"--resume auto: no readable checkpoint in {self.run_dir / ckpt.CHECKPOINT_DIR} "
                f"({', '.join(damaged)} damaged): remove them to start anew, or choose another --out"
            )
        return None

    def _maybe_resume(self) -> dict[str, Any] | None:
        if not self.config.run.resume:
            return None
        found = self._load_resume_state()
        if found is None:
            if self.env.is_main:
                log.info("--resume auto: no checkpoint in %s, starting a new run", self.run_dir)
            return None
        path, state = found
        end = self.schedule.total_steps
        if self.config.run.stop_step is not None:
            end = min(end, self.config.run.stop_step)
        self._keep_mixture(path, state)
        if int(state.get("step", 0)) < end:  # a finished run trains no more: nothing to change
            self._check_resume_options(path, state)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            counters, ranks = state["counters"], state["ranks"]
        except (RuntimeError, KeyError, ValueError, TypeError) as err:
            raise ckpt.CheckpointError(
                f"{path} does not fit this run ({str(err).splitlines()[0][:120]}): resume with "
                f"the options it was trained with (--model {state.get('model_name')}), or "
                "choose another --out"
            ) from err
        self.step = int(state["step"])
        self.resumed_from = path
        self.drawn = _drawn_of(ranks) if self.env.is_main else {}
        record = state.get("record")
        self.resumed_record = record if isinstance(record, dict) else {}
        self.images_seen = int(counters["images"])
        self.nan_skips.fill_(float(counters["nan_skips"]))
        if len(ranks) == self.env.world_size:
            ckpt.restore_rng(ranks[self.env.rank]["rng"])
            data_state = ranks[self.env.rank]["data"]
        else:
            log.warning(
                "checkpoint from %d ranks resumed on %d: data streams restart with new seeds",
                len(ranks),
                self.env.world_size,
            )
            data_state = {"num_workers": -1, "batches": self.step}
            if self.env.is_main:  # the counts of what was drawn go on, on one rank
                data_state["drawn"] = _drawn_of(ranks)
        if self.env.is_main:
            log.info("resumed %s at step %d", path, self.step)
        self._rebuild_schedule(state)
        return data_state

    def _keep_mixture(self, path: Path, state: dict[str, Any]) -> None:
        """A resumed run draws with the checkpoint's --mix / --mix-bin: taken over when none
        is given, refused when another is (the same shares at another scale are the same)."""
        saved = (state.get("config") or {}).get("data") or {}
        data = self.config.data
        for name, flag in (("mix", "--mix"), ("mix_bin", "--mix-bin")):
            recorded, given = tuple(saved.get(name) or ()), getattr(data, name)
            if not recorded or not given:
                data = dataclasses.replace(data, **{name: given or recorded})
                continue
            before, now = parse_weights(recorded, flag), parse_weights(given, flag)
            if shares(before) != shares(now):
                raise ckpt.CheckpointError(
                    f"{path} was trained with {flag} {','.join(recorded)}; resume with that "
                    f"mixture (or without {flag}), or choose another --out"
                )
        self.config = dataclasses.replace(self.config, data=data)

    def _rebuild_schedule(self, state: dict[str, Any]) -> None:
        """The lr is a function of the options, not of the checkpoint: a run resumed with another
        length trains on with the schedule of that length (one line says so); the record keeps
        every length the run had."""
        history = recorded_schedules(state) or [segment(0, self.schedule)]
        previous, now = history[-1], segment(self.step, self.schedule)
        changed = (previous["total_steps"], previous["warmup_steps"]) != (
            now["total_steps"],
            now["warmup_steps"],
        )
        if changed and self.step < self.schedule.total_steps:
            history.append(now)
            self.say(length_change(previous, self.schedule, self.step,
                                   self.scheduler.lr_at(self.step)))  # fmt: skip
        self.schedules = history

    def say(self, line: str) -> None:
        """A line for the user, from the main rank only."""
        if self.env.is_main:
            say(line)

    def _check_resume_options(self, path: Path, state: dict[str, Any]) -> None:
        """Refuse to resume with other optimisation options or another model than the
        checkpoint was trained with (a longer --steps/--epochs is fine)."""
        saved = state.get("config")
        if not isinstance(saved, dict):
            return  # an older checkpoint without its config: nothing to compare
        now = _plain(self.config.as_dict())
        differing = []
        for group, name in RESUME_FIXED:
            if name not in saved.get(group, {}):
                continue
            recorded, given = saved[group][name], now[group][name]
            if recorded != given:
                shown = "not set" if recorded in (None, []) else recorded
                differing.append(f"--{name.replace('_', '-')} {shown}")
        differing += _model_differences(state.get("model_config"), self.model_config)
        if differing:
            raise ckpt.CheckpointError(
                f"{path} was trained with other options; resume with its "
                f"{', '.join(differing)} (as recorded), or choose another --out"
            )

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
            self.drawn = _drawn_of(ranks)
            state = {
                "format": ckpt.FORMAT_VERSION,
                "step": self.step,
                "model_name": self.config.run.model,
                "model_config": dataclasses.asdict(self.model_config) if self.model_config else {},
                "config": self._saved_config(),
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

    def _saved_config(self) -> dict[str, Any]:
        """The config as run, with throw-away loopback URLs replaced by what they were."""
        config = _plain(self.config.as_dict())
        config["data"]["shards"] = safe_shard_specs(config["data"]["shards"])
        if config["data"].get("info"):
            config["data"]["info"] = safe_shard_specs([config["data"]["info"]])[0]
        return config

    # ------------------------------------------------------------------ steps
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        yield from self.loader

    def _micro_step(self, images: torch.Tensor, sync: bool, interval: _Interval) -> None:
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
        self, interval: _Interval, bar: tqdm | None, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - interval.started, 1e-9)
        loss = (interval.loss_sum / interval.loss_count.clamp(min=1)).item()  # host sync
        nan_skips = int(self.nan_skips.item())
        images_per_s = interval.images * self.env.world_size / elapsed
        mfu = None
        if self.peak and self.flops_per_image:
            per_gpu = interval.images / elapsed
            mfu = 3 * self.flops_per_image * per_gpu / self.peak
        totals = self.tracker.totals()
        record = {
            "step": self.step,
            "epoch": (
                self.images_seen / self.schedule.samples_per_epoch
                if self.schedule.samples_per_epoch
                else None
            ),
            "loss": loss if interval.loss_count.item() > 0 else None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": images_per_s,
            "mfu": mfu,
            "data_wait": interval.data_wait / elapsed,
            "nan_skips": nan_skips,
            **totals,
            **(extra or {}),
            "time": time.time(),
        }
        self.metrics.write(record)
        if bar is None:
            self.say(log_line(record, self.schedule.total_steps))
        else:
            bar.set_postfix(
                loss=f"{loss:.4f}",
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

    def _validate(self, interval: _Interval) -> dict[str, Any]:
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
        new_interval = lambda: _Interval(  # noqa: E731
            torch.zeros((), device=self.device), torch.zeros((), device=self.device)
        )
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


def _drawn_of(ranks: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The samples every rank trained on, per source and per bin (their trackers' counts)."""
    drawn: dict[str, dict[str, int]] = {}
    for rank in ranks:
        add_counts(drawn, (rank.get("data") or {}).get("drawn") or {})
    return drawn


def _plain(value: Any) -> Any:
    """Tuples -> lists so the config reads back the same from JSON and from a checkpoint."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


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
