"""The validation loss: a fixed held-out set, evaluated with the same masks every time.

    plan = split_off_val_shards(config.data, resolved)     # --val-shards leave the training data
    held, note = choose_held_out(config.data, plan, seed, epoch_samples, recorded)
    validator = Validator.build(model, held, plan, config.data)
    result = validator.evaluate(model, amp_dtype, step)    # result.loss, result.common_loss

The held-out set is either the first `--val-samples` images of `--val-shards` (left out of
training whole), or a seeded sample of the training shards: the first images of up to
SAMPLED_SHARDS seeded-chosen shards (a shard holds its bin's samples in a seeded random order),
never more than half of any shard, never more than MAX_HELD_OUT_SHARE of the data. The training
stream passes over those uids; the record names them, so a resumed run uses the same set.

Each image is read once, centre-cropped at the model's aspect ratio and resized (bicubic) to its
input size. Two losses (METHOD.md section 5, MSE in the model's target space):
- `loss`: the model's own objective, its masking (entropy and grey masking are deterministic;
  random masking draws its masks once from a fixed seed) and the masked patches only;
- `common_loss`: every patch, under one random mask of ratio COMMON_MASK_RATIO drawn from
  COMMON_MASK_SEED: the same mask whatever the model's own masking, so runs of MAE, InfMAE and
  DuGI-MAE (and their ablations) compare on it. The training loss does not: entropy masking
  hides the easy patches.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from webdataset.tariterators import base_plus_ext

from pretrain.config import DataConfig
from pretrain.data import (
    ResolvedData,
    ShardUnreachableError,
    decode_ir_png,
    expand_shard_urls,
    open_url,
    redact_url,
    shard_key,
    stretch_range,
    to_uint8,
)
from pretrain.data.tarstream import tar_members
from pretrain.data.transforms import member_size_limit, resize_bicubic
from pretrain.models.masking import PatchMask, random_masking
from pretrain.models.pixels import normalise

log = logging.getLogger(__name__)

COMMON_MASK_RATIO = 0.75  # the paper's ratio, for the loss every model is compared on
COMMON_MASK_SEED = 590_000  # one seed for every run: the same common mask across models
OWN_MASK_SEED = COMMON_MASK_SEED  # random-masking models' own fixed masks (= the common one
# at ratio 0.75: one forward pass gives both losses)
MAX_HELD_OUT_SHARE = 0.1  # a sampled held-out set takes at most this share of the data
SAMPLED_SHARDS = 8  # a sampled held-out set spreads over this many shards (bins, sources)
SAMPLE_SEED_SALT = 23  # keeps the shard choice apart from the stream's own draws


@dataclass(frozen=True)
class HeldOut:
    """The held-out set as the run's record names it."""

    kind: str  # "sample" (seeded sample of the training shards) or "shards" (--val-shards)
    shards: tuple[str, ...]  # per image: the shard key (<bin>/<shard>.tar) it is read from
    uids: tuple[str, ...]  # per image: its sample key

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "samples": len(self.uids),
            "shards": list(self.shards),
            "uids": list(self.uids),
        }

    @classmethod
    def from_dict(cls, data: Any) -> HeldOut | None:
        """The record's set; None when the record holds none (or not in this form)."""
        if not isinstance(data, dict):
            return None
        kind, shards, uids = data.get("kind"), data.get("shards"), data.get("uids")
        if kind not in ("sample", "shards") or not isinstance(shards, list):
            return None
        if not isinstance(uids, list) or len(uids) != len(shards) or not uids:
            return None
        if not all(isinstance(v, str) for v in [*shards, *uids]):
            return None
        return cls(kind, tuple(shards), tuple(uids))

    @property
    def excluded(self) -> frozenset[str]:
        """The uids the training stream passes over (--val-shards are out of it already)."""
        return frozenset(self.uids) if self.kind == "sample" else frozenset()


@dataclass(frozen=True)
class ValidationData:
    """The run's data split: what it trains on and where held-out images are read."""

    train: ResolvedData
    val_urls: tuple[str, ...]  # --val-shards expanded (empty: the set is sampled from train)


def split_off_val_shards(config: DataConfig, resolved: ResolvedData) -> ValidationData:
    """The training data without the --val-shards (matched by <bin>/<shard>.tar)."""
    if not config.val_shards:
        return ValidationData(resolved, ())
    with naming_val_shards():
        val_urls = expand_shard_urls(config.val_shards, config.split, config)
    held = {shard_key(url) for url in val_urls}
    train = [url for url in resolved.urls if shard_key(url) not in held]
    if not train:
        raise ValueError(
            "--val-shards are every shard of --shards: nothing is left to train on; "
            "hold out fewer shards or use --val-samples"
        )
    info = resolved.info.select(train) if resolved.info is not None else None
    return ValidationData(ResolvedData(train, info, resolved.info_url), tuple(val_urls))


@contextlib.contextmanager
def naming_val_shards() -> Iterator[None]:
    """The data layer's one-line errors name --shards; for a held-out shard they mean
    --val-shards (the training shards are fine)."""
    try:
        yield
    except (ShardUnreachableError, ValueError) as err:
        raise type(err)(str(err).replace("--shards", "--val-shards")) from err


def choose_held_out(
    config: DataConfig,
    data: ValidationData,
    seed: int,
    epoch_samples: int | None,
    recorded: dict[str, Any] | None = None,
) -> tuple[HeldOut | None, str]:
    """The held-out set and one line saying what it is, or why there is none.

    `recorded`: the resumed checkpoint's record (None: a new run). A resumed run keeps the set
    it recorded, and one that recorded none (it trained on every image) stays without."""
    if recorded is not None:
        held = HeldOut.from_dict(recorded.get("validation"))
        if held is None:
            return None, (
                "validation off: the resumed run was started without a held-out set "
                "(it trains on every image)"
            )
        return held, f"validation: the {len(held.uids)} held-out images the run recorded"
    if config.val_samples <= 0:
        return None, "validation off (--val-samples 0)"
    if data.val_urls:
        with naming_val_shards():
            held = HeldOut("shards", *_first_keys(data.val_urls, config, config.val_samples))
        if not held.uids:
            raise ValueError("--val-shards hold no readable image: check them with inf590k verify")
        return held, f"validation: {len(held.uids)} images of {len(data.val_urls)} --val-shards"
    if not epoch_samples:
        return None, (
            "validation off: the data's size is unknown (no _info.json), so a held-out sample "
            "could take too much of it; pass --samples-per-epoch N or --val-shards"
        )
    most = int(epoch_samples * MAX_HELD_OUT_SHARE)
    if config.val_samples > most:
        hint = f"pass --val-samples {most} or fewer, or " if most else "pass "
        return None, (
            f"validation off: {config.val_samples} held-out images would be more than "
            f"{MAX_HELD_OUT_SHARE:.0%} of the {epoch_samples} samples; {hint}--val-shards"
        )
    held = sample_held_out(data.train.urls, config, seed, config.val_samples)
    if held is None:
        return None, "validation off: no shard could give held-out images"
    spread = len(set(held.shards))
    return held, (
        f"validation: {len(held.uids)} held-out images (seeded sample of {spread} shards), "
        "never trained on"
    )


def sample_held_out(
    urls: Sequence[str], config: DataConfig, seed: int, count: int
) -> HeldOut | None:
    """A seeded sample: the first images of seeded-chosen shards, at most half of each."""
    order = list(dict.fromkeys(urls))
    random.Random(seed * 1_000_003 + SAMPLE_SEED_SALT).shuffle(order)
    per_shard = math.ceil(count / min(len(order), SAMPLED_SHARDS))
    shards: list[str] = []
    uids: list[str] = []
    for url in order:
        if len(uids) >= count:
            break
        try:
            keys = list(_sample_keys(url, config, 2 * per_shard))
        except (ShardUnreachableError, ValueError, OSError) as err:
            log.warning("held-out sample: skipping shard %s (%s)", redact_url(url), err)
            continue
        take = min(per_shard, len(keys) // 2, count - len(uids))
        shards += [shard_key(url)] * take
        uids += keys[:take]
    return HeldOut("sample", tuple(shards), tuple(uids)) if uids else None


def _first_keys(
    urls: Sequence[str], config: DataConfig, count: int
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(shard keys, uids) of the first `count` images of the shards, in order."""
    shards: list[str] = []
    uids: list[str] = []
    for url in urls:
        if len(uids) >= count:
            break
        keys = list(_sample_keys(url, config, count - len(uids)))
        shards += [shard_key(url)] * len(keys)
        uids += keys
    return tuple(shards), tuple(uids)


def _pngs(url: str, config: DataConfig) -> Iterator[tuple[str, bytes]]:
    """(sample key, PNG bytes) of a shard in tar order (each key once), read as the stream does."""
    seen: set[str] = set()
    with contextlib.closing(open_url(url, config)) as stream:
        wanted = lambda name: name.endswith(".png")  # noqa: E731
        for name, data in tar_members(stream, wanted, max_size=member_size_limit(config)):
            key = (base_plus_ext(name) or (None,))[0]
            if key and key not in seen:
                seen.add(key)
                yield key, data


def _sample_keys(url: str, config: DataConfig, limit: int) -> Iterator[str]:
    for index, (key, _) in enumerate(_pngs(url, config)):
        if index >= limit:
            return
        yield key


def read_held_out(
    held: HeldOut, urls: Sequence[str], config: DataConfig, image_hw: tuple[int, int]
) -> torch.Tensor:
    """The held-out images, centre-cropped and resized: uint8 [N, 1, H, W] in record order.

    An image the record names that its shard no longer holds (or cannot be decoded) is an
    error: the set would silently change between evaluations otherwise."""
    by_key = {shard_key(url): url for url in urls}
    wanted: dict[str, set[str]] = {}
    for shard, uid in zip(held.shards, held.uids, strict=True):
        wanted.setdefault(shard, set()).add(uid)
    found: dict[tuple[str, str], np.ndarray] = {}
    for shard, uids in wanted.items():
        if shard not in by_key:
            raise ValueError(
                f"held-out shard {shard} is not among the shards given; pass the run's "
                "--shards (and --val-shards) as it started"
            )
        for key, png in _pngs(by_key[shard], config):
            if key in uids:
                try:
                    frame = decode_ir_png(png, config.max_pixels)
                except Exception as err:  # noqa: BLE001 - any undecodable image: one line
                    raise ValueError(
                        f"held-out image {shard}:{key} cannot be decoded ({err}); check the "
                        "shard with inf590k verify"
                    ) from err
                found[(shard, key)] = centre_crop(frame, image_hw)
                if len(found) == sum(len(u) for u in wanted.values()):
                    break
    missing = [
        f"{s}:{u}" for s, u in zip(held.shards, held.uids, strict=True) if (s, u) not in found
    ]
    if missing:
        raise ValueError(
            f"{len(missing)} held-out image(s) are not in their shards any more (first "
            f"{missing[0]}): the data changed since the run started; start a new run"
        )
    images = np.stack([found[(s, u)] for s, u in zip(held.shards, held.uids, strict=True)])
    return torch.from_numpy(images)[:, None]  # [N, 1, H, W] uint8


def centre_crop(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] uint8/uint16 -> [H, W] uint8: the largest centred crop of the output's aspect
    ratio, bicubic-resized (16-bit frames stretched to 8 bits on the whole frame's range)."""
    height, width = frame.shape
    out_h, out_w = size
    if width * out_h > height * out_w:  # wider than the output: cut the sides
        crop_h, crop_w = height, max(1, round(height * out_w / out_h))
    else:
        crop_h, crop_w = max(1, round(width * out_h / out_w)), width
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    crop = frame[top : top + crop_h, left : left + crop_w]
    if crop.dtype == np.uint16:
        crop = to_uint8(crop, *stretch_range(frame))
    return resize_bicubic(np.ascontiguousarray(crop), size)


@dataclass(frozen=True)
class ValidationResult:
    step: int
    loss: float  # the model's own masking, masked patches
    common_loss: float  # every patch, under the common random mask
    images: int
    seconds: float
    masking: str

    def record(self) -> dict[str, Any]:
        """The fields metrics.jsonl gets at a validation step."""
        return {
            "val_loss": self.loss,
            "val_common_loss": self.common_loss,
            "val_images": self.images,
            "val_seconds": self.seconds,
        }

    def line(self) -> str:
        return (
            f"validation at step {self.step}: loss {self.loss:.4f} ({self.masking} masking, "
            f"masked patches), all-patch loss {self.common_loss:.4f} (common random mask "
            f"{COMMON_MASK_RATIO:g}), {self.images} images, {self.seconds:.1f} s"
        )


class Validator:
    """Evaluates a masked autoencoder on fixed images with fixed masks (main rank only)."""

    def __init__(self, images: torch.Tensor, model_config: Any, batch_size: int) -> None:
        self.images = images  # uint8 [N, 1, H, W]
        self.config = model_config
        self.batch_size = max(1, batch_size)
        self.common = random_masking(
            images, model_config.patch_size, COMMON_MASK_RATIO, _generator(COMMON_MASK_SEED)
        )  # [N, L] each
        self.own: PatchMask | None = None  # None: the model's own deterministic masking
        if model_config.masking == "random":
            self.own = random_masking(
                images, model_config.patch_size, model_config.mask_ratio, _generator(OWN_MASK_SEED)
            )
        self.shared_pass = self.own is not None and torch.equal(self.own.mask, self.common.mask)

    @classmethod
    def build(
        cls,
        model: nn.Module,
        held: HeldOut,
        data: ValidationData,
        config: DataConfig,
    ) -> Validator:
        model_config = model.config
        urls = data.val_urls if held.kind == "shards" else data.train.urls
        images = read_held_out(held, urls, config, tuple(model_config.image_hw))
        return cls(images, model_config, config.batch_size)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, amp_dtype: torch.dtype | None, step: int
    ) -> ValidationResult:
        started = time.perf_counter()
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        totals = torch.zeros(4, dtype=torch.float64, device=device)  # own sum/count, common
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):  # the run's random stream stays as is
                for start in range(0, len(self.images), self.batch_size):
                    totals += self._batch(model, slice(start, start + self.batch_size), amp_dtype)
        finally:
            model.train(was_training)
        own_sum, own_count, common_sum, common_count = totals.tolist()  # one host sync
        return ValidationResult(
            step=step,
            loss=own_sum / max(own_count, 1.0),
            common_loss=common_sum / max(common_count, 1.0),
            images=len(self.images),
            seconds=time.perf_counter() - started,
            masking=str(self.config.masking),
        )

    def _batch(self, model: nn.Module, rows: slice, amp_dtype: torch.dtype | None) -> torch.Tensor:
        """[own loss x masked patches, masked patches, common loss x patches, patches]."""
        device = next(model.parameters()).device
        pixels = self.images[rows].to(device)  # uint8 [B, 1, H, W]
        x = normalise(pixels, self.config.in_chans)  # [B, C, H, W]
        common = _rows(self.common, rows, device)
        autocast = (
            torch.autocast(device.type, dtype=amp_dtype)
            if amp_dtype is not None
            else contextlib.nullcontext()
        )
        own = _rows(self.own, rows, device) if self.own is not None else None
        with autocast:
            _, pred_common, common_mask = model(x, pixels, common)
            if self.shared_pass:  # random masking at the common ratio: the same mask
                pred_own, mask = pred_common, common_mask
            else:
                _, pred_own, mask = model(x, pixels, own)  # own=None: the model's own masking
        everything = torch.ones_like(common.mask)  # [B, L]
        own_loss = model.forward_loss(x, pred_own, mask)
        common_loss = model.forward_loss(x, pred_common, everything)
        return torch.stack(
            [
                own_loss.double() * mask.sum(),
                mask.sum().double(),
                common_loss.double() * everything.sum(),
                everything.sum().double(),
            ]
        )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _rows(patch_mask: PatchMask, rows: slice, device: torch.device) -> PatchMask:
    return PatchMask(*(t[rows].to(device) for t in patch_mask))


def validation_due(step: int, end: int, every: int) -> bool:
    """A pass every `every` steps and one at the last step."""
    return step == end or (every > 0 and step % every == 0)
