"""Shard stream for pretraining: URL expansion, opening, webdataset tar reading, decoding, crops.

The stream is infinite and deterministic: for every (rank, worker) it is a pure function of the
seed, so a run can save how far each worker got (`WorkerPosition`) and a resumed run continues
exactly there. Each worker reads its shards in "passes" (one pass = its share of the shard list);
a pass has its own shard order and shuffle buffer, so resuming replays at most one pass of
bytes (without decoding) to reach the saved offset.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import pickle
import posixpath
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import braceexpand
import cv2
import numpy as np
import torch
import webdataset as wds
from webdataset.tariterators import group_by_keys

from inf590k.dataset.hub import is_hub_host, read_token
from inf590k.dataset.layout import (
    DATA_DIRNAME,
    INFO_SOURCE_KEYS,
    SIZES_PATH,
    SOURCES_PATH,
    SUMS_PATH,
    SplitIndex,
    check_relpath,
    read_info_sources,
    read_splits,
)
from pretrain.config import DataConfig
from pretrain.pngcrop import check_pixels, decode_box, decode_png, max_png_bytes, read_header
from pretrain.tarstream import tar_members

log = logging.getLogger(__name__)

INFO_NAME = "_info.json"
# HTTP statuses worth retrying; any other 4xx is a wrong URL or missing rights.
TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
# Crops of at least this many pixels are resized by `resize_bicubic_packed` (faster there;
# below it torch's fixed cost per call dominates).
PACKED_RESIZE_PIXELS = 40_000


class ShardUnreachableError(RuntimeError):
    """The data cannot be read: a URL failed after its retries (or is wrong: 404, 403), too many
    of a pass's shards failed, or a whole pass gave no usable sample. Its message is one line."""


class NetworkDisabledError(ShardUnreachableError):
    """HF_HUB_OFFLINE is set and a URL needs the network: fatal, never retried or skipped."""


class ShardReadTimeout(TimeoutError):
    """A whole shard took longer than --read-deadline to arrive (a dripping server)."""


@dataclass
class WorkerPosition:
    """How far one (logical) loader worker got; plain ints so it checkpoints with weights_only."""

    pass_index: int = 0  # which pass over the worker's shard share
    offset: int = 0  # samples of that pass already handed out (decoded or skipped as bad)
    bad_samples: int = 0  # undecodable samples skipped so far
    shard_errors: int = 0  # corrupt / truncated shards skipped so far

    def as_dict(self) -> dict[str, int]:
        return {
            "pass_index": self.pass_index,
            "offset": self.offset,
            "bad_samples": self.bad_samples,
            "shard_errors": self.shard_errors,
        }


@dataclass(frozen=True)
class DatasetInfo:
    num_samples: int
    filenames: tuple[str, ...]  # absolute URLs
    shard_lengths: tuple[int, ...]
    sources: tuple[dict[str, Any], ...] = ()  # top-level "sources" of _info.json, if any
    # `<bin>/<shard>.tar` -> sha256 from the dataset's metadata/SHA256SUMS, where it has one
    sums: dict[str, str] = field(default_factory=dict)

    def select(self, urls: Sequence[str]) -> DatasetInfo:
        """The part of the dataset that `urls` read: their shards, lengths and sample count.

        Shards are matched by `<bin>/<shard>.tar`, however they are reached. For shards without
        a length in _info.json the count is estimated from the others (and a warning says so)."""
        keys = [shard_key(url) for url in urls]
        all_keys = [shard_key(name) for name in self.filenames]
        if keys == all_keys:
            return self
        has_lengths = len(self.shard_lengths) == len(self.filenames)
        lengths = dict(zip(all_keys, self.shard_lengths, strict=True)) if has_lengths else {}
        listed = [
            (url, lengths[key]) for url, key in zip(urls, keys, strict=True) if key in lengths
        ]
        total = sum(n for _, n in listed)
        missing = len(urls) - len(listed)
        if missing:
            per_shard = (
                total / len(listed) if listed else self.num_samples / max(1, len(self.filenames))
            )
            total = round(total + per_shard * missing)
            log.warning(
                "_info.json gives no length for %d of the %d selected shards: epoch length "
                "estimated at %d samples (--samples-per-epoch sets it)",
                missing,
                len(urls),
                total,
            )
        return DatasetInfo(
            total, tuple(u for u, _ in listed), tuple(n for _, n in listed), self.sources, self.sums
        )


# ---------------------------------------------------------------------------- URLs and opening


def is_info_url(url: str) -> bool:
    return posixpath.basename(urllib.parse.urlparse(url).path) == INFO_NAME


def _join(base_url: str, relative: str) -> str:
    """`relative` resolved against the folder of `base_url` (paths, file:// and http(s)://).
    For names the user typed; names read from an index go through `index_member_url`."""
    if "://" in base_url:
        return urllib.parse.urljoin(base_url, relative)
    return posixpath.join(posixpath.dirname(base_url), relative)


def index_member_url(index_url: str, name: object) -> str:
    """A shard name read from an index, as a URL inside the index's own folder.

    The index may be someone else's file, so a name is accepted only as a plain relative path
    (`layout.check_relpath`): `pipe:...` (a shell command to webdataset), another scheme or
    host, an absolute path or `..` is refused (ValueError naming the index), and the result
    keeps the index's scheme, host and folder. An index read through `pipe:` locates nothing."""
    where = redact_url(index_url)
    if index_url.startswith("pipe:"):
        raise ValueError(
            f"{where}: shards listed by an index read through pipe: cannot be located; pass the "
            "shards themselves to --shards"
        )
    check_relpath(name, f"{where}: shard name")
    if not name.endswith(".tar"):
        raise ValueError(f"{where}: shard name {name!r} is not a .tar shard")
    return _join(index_url, name)


MAX_INFO_BYTES = 64 << 20  # an _info.json of 156K shards is ~10 MB; anything larger is refused


def read_index_json(url: str, config: DataConfig) -> Any:
    """The parsed JSON of a small index file (bounded: someone else's file may be endless)."""
    with open_url(url, config) as stream:
        try:
            data = stream.read(MAX_INFO_BYTES + 1)
            if len(data) > MAX_INFO_BYTES:
                raise ValueError(f"over {MAX_INFO_BYTES >> 20} MiB")
            return json.loads(data)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{redact_url(url)} is not a readable JSON index ({exc})") from None


def read_info(url: str, split: str = "train", config: DataConfig | None = None) -> DatasetInfo:
    """Parse a timm-format `_info.json`, checked (`layout.read_splits`: names, counts, totals;
    a lie is one ValueError naming the field); shard names become URLs inside its folder."""
    config = config or DataConfig()
    where = redact_url(url)
    info = read_index_json(url, config)
    splits = read_splits(info, where)
    if split not in splits:
        raise ValueError(f"{where} has no split {split!r} (it has {sorted(splits)}); pick --split")
    entry = splits[split]
    if not entry.filenames:
        raise ValueError(f"{where}: split {split!r} lists no shards")
    filenames = tuple(index_member_url(url, name) for name in entry.filenames)
    sources = tuple(read_info_sources(info, where))
    sums = check_against_metadata(url, entry, sources, config)
    return DatasetInfo(entry.num_samples, filenames, entry.shard_lengths, sources, sums)


def _metadata_file(index_url: str, relpath: str, config: DataConfig) -> Any | None:
    """A file of the dataset's metadata/ folder beside data/_info.json, parsed (JSON, or text
    for SHA256SUMS); None when the index is not in a dataset folder or the file is absent."""
    path = urllib.parse.urlparse(index_url).path if "://" in index_url else index_url
    if index_url.startswith("pipe:") or posixpath.basename(posixpath.dirname(path)) != DATA_DIRNAME:
        return None
    url = _join(index_url, f"../{relpath}")
    try:
        if relpath == SUMS_PATH:
            with open_url(url, config) as stream:
                return stream.read(MAX_INFO_BYTES).decode("utf-8", "replace")
        return read_index_json(url, config)
    except NetworkDisabledError:
        raise
    except ShardUnreachableError:
        return None


def _sums_by_shard(text: str) -> dict[str, str]:
    """`sha256sum` lines of data/ shards -> {`<bin>/<shard>.tar`: digest}."""
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.partition("  ")
        if len(digest) == 64 and name.startswith(f"{DATA_DIRNAME}/"):
            sums[name[len(DATA_DIRNAME) + 1 :]] = digest
    return sums


def check_against_metadata(
    index_url: str, split: SplitIndex, sources: tuple[dict[str, Any], ...], config: DataConfig
) -> dict[str, str]:
    """_info.json against the sidecars of its dataset folder (metadata/sizes.json, SHA256SUMS,
    sources.json), where it sits in one: a disagreement is one ValueError naming the field.
    Returns each listed shard's recorded sha256 (checked as the shard streams). Training
    takes the epoch length and the weights' licence from these fields."""
    where = redact_url(index_url)
    sizes = _metadata_file(index_url, SIZES_PATH, config)
    if isinstance(sizes, dict):
        for name, length in zip(split.filenames, split.shard_lengths, strict=True):
            if sizes.get(f"{DATA_DIRNAME}/{name}") != length:
                raise ValueError(
                    f"{where}: field splits.{split.name}.shard_lengths gives {name} {length} "
                    f"samples, {SIZES_PATH} says {sizes.get(f'{DATA_DIRNAME}/{name}')!r}"
                )
    table = _metadata_file(index_url, SOURCES_PATH, config)
    if isinstance(table, list) and sources:
        recorded = [
            {key: e.get(key) for key in INFO_SOURCE_KEYS}
            for e in table
            if isinstance(e, dict) and e.get("samples")
        ]
        if recorded != list(sources):
            raise ValueError(
                f"{where}: field sources disagrees with {SOURCES_PATH} (licences, names or "
                "counts edited?): run `inf590k verify` on the dataset"
            )
    text = _metadata_file(index_url, SUMS_PATH, config)
    if text is None:
        return {}
    sums = _sums_by_shard(text)
    missing = [name for name in split.filenames if name not in sums]
    if missing:
        raise ValueError(f"{where}: shard {missing[0]} is not listed in {SUMS_PATH}")
    return {name: sums[name] for name in split.filenames}


def expand_shard_urls(
    specs: str | Sequence[str], split: str = "train", config: DataConfig | None = None
) -> list[str]:
    """URLs from brace patterns, `::` lists, `_info.json` files (or folders holding one).

    `"data/640x512/shard-{000000..000009}.tar"`, `"data/*/*.tar"` (local), `"a.tar::b.tar"`,
    `"https://host/ds/_info.json"`, `"pipe:cat x.tar"` all work; order is kept.
    """
    if isinstance(specs, str):
        specs = [specs]
    urls: list[str] = []
    for spec in specs:
        for part in spec.split("::"):
            part = part.strip()
            if not part:
                continue
            if is_info_url(part):
                urls.extend(read_info(part, split, config).filenames)
                continue
            if "://" not in part and not part.startswith("pipe:"):
                local_info = folder_info(part)
                if local_info:
                    urls.extend(read_info(local_info, split, config).filenames)
                    continue
            for url in braceexpand.braceexpand(part):
                urls.extend(_local_glob(url))
    if not urls:
        raise ValueError(f"no shard URLs in {list(specs)!r}; pass --shards PATTERN_OR_URL")
    return urls


def _local_glob(url: str) -> list[str]:
    """A local path with `*`, `?` or `[...]` becomes the sorted files it matches; URLs stay.

    A local path that is not a file fails here, at once, rather than after retries."""
    if "://" in url or url.startswith("pipe:"):
        return [url]
    if not any(c in url for c in "*?["):
        if os.path.isdir(url):
            raise ValueError(
                f"--shards {url!r} is a folder without {INFO_NAME}: pass a built dataset "
                f"folder or its shards, e.g. '{url.rstrip('/')}/*/*.tar'"
            )
        if not os.path.exists(url):
            raise ValueError(f"--shards {url!r}: no such file; check the path")
        return [url]
    matches = sorted(glob.glob(url))
    if not matches:
        raise ValueError(f"--shards {url!r} matches no file")
    return matches


def _local_exists(path: str) -> bool:
    return os.path.isfile(path)


def folder_info(folder: str) -> str | None:
    """The index of a local dataset folder: FOLDER/data/_info.json (the Hub layout) or
    FOLDER/_info.json (a folder of bin folders); None when it holds neither."""
    for candidate in (posixpath.join(folder, "data", INFO_NAME), posixpath.join(folder, INFO_NAME)):
        if _local_exists(candidate):
            return candidate
    return None


def find_info_url(shard_urls: Sequence[str], config: DataConfig | None = None) -> str | None:
    """`_info.json` of a dataset laid out as `root/<bin>/<shard>.tar` (or `root/<shard>.tar`)."""
    first = shard_urls[0]
    if first.startswith("pipe:"):
        return None
    candidates = list(dict.fromkeys([_join(first, f"../{INFO_NAME}"), _join(first, INFO_NAME)]))
    for candidate in candidates:
        try:
            with open_url(candidate, config or DataConfig()):
                return candidate
        except NetworkDisabledError:
            raise
        except ShardUnreachableError:
            continue
    return None


class _DropAuthOnRedirect(urllib.request.HTTPRedirectHandler):
    """urllib forwards every header on redirect; the Hub redirects to a CDN that must not get
    the token (requests/httpx do the same stripping)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if (
            new is not None
            and urllib.parse.urlparse(newurl).hostname
            != urllib.parse.urlparse(req.full_url).hostname
        ):
            new.remove_header("Authorization")
        return new


def redact_url(url: str) -> str:
    """`url` fit for messages: query values (signed-URL signatures, tokens) and passwords hidden."""
    if "://" not in url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{key}=***" if sep else key
        for key, sep, _ in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def network_disabled() -> bool:
    """HF_HUB_OFFLINE set to a true value (as huggingface_hub reads it), checked at each call."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


class _DeadlineReader(io.RawIOBase):
    """An HTTP body that fails with ShardReadTimeout once `deadline_s` have passed since the
    request. Each read takes at most one socket read (`read1`), which the per-read timeout
    bounds, so a server sending a byte every few seconds cannot hold the worker for longer
    than deadline + timeout."""

    def __init__(self, response: IO[bytes], url: str, deadline_s: float) -> None:
        super().__init__()
        self._response = response
        self._url = url
        self._deadline_s = deadline_s
        self._deadline = time.monotonic() + deadline_s

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if time.monotonic() > self._deadline:
            raise ShardReadTimeout(
                f"{redact_url(self._url)} was still arriving after {self._deadline_s:.0f}s "
                "(--read-deadline)"
            )
        chunk = self._response.read1(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._response.close()
        super().close()


def _open_http(url: str, config: DataConfig) -> IO[bytes]:
    # Hand-written rather than webdataset's curl pipe: curl puts the token on its command line
    # (visible to other users) and webdataset's pipe errors print that command line.
    headers = {"User-Agent": "inf590k-pretrain"}
    if is_hub_host(urllib.parse.urlparse(url).hostname):
        token = read_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
    opener = urllib.request.build_opener(_DropAuthOnRedirect)
    response = opener.open(urllib.request.Request(url, headers=headers), timeout=config.timeout)
    return io.BufferedReader(_DeadlineReader(response, url, config.read_deadline), 1 << 20)


def _local_path(url: str) -> str | None:
    """The file a local URL names (plain path or file://), None for network and pipe URLs."""
    if url.startswith("pipe:"):
        return None
    if url.startswith("file://"):
        return urllib.parse.unquote(urllib.parse.urlparse(url).path)
    return None if "://" in url else url


def open_url(url: str, config: DataConfig) -> IO[bytes]:
    """Open a shard or index for reading; retry transient failures, then name the URL.

    A local file that does not exist, a non-transient HTTP status (404, 403) and HF_HUB_OFFLINE
    fail at once; network errors and 408/429/5xx are retried --retries times."""
    shown = redact_url(url)
    scheme = urllib.parse.urlparse(url).scheme
    local = _local_path(url)
    if local is not None:
        if not os.path.isfile(local):
            raise ShardUnreachableError(f"{shown}: no such file; check the path")
        return open(local, "rb")  # noqa: SIM115 - the caller closes it
    if scheme in ("http", "https") and network_disabled():
        raise NetworkDisabledError(
            f"HF_HUB_OFFLINE is set: not fetching {shown}; use local shards or unset it"
        )
    attempts = max(1, config.retries)
    last_reason = ""
    for attempt in range(attempts):
        try:
            if scheme in ("http", "https"):
                return _open_http(url, config)
            return wds.gopen(url, "rb")
        except urllib.error.HTTPError as exc:
            if exc.code not in TRANSIENT_HTTP:
                hint = (
                    "set HF_TOKEN to a token with read access"
                    if exc.code in (401, 403)
                    else "check the URL"
                )
                raise ShardUnreachableError(f"HTTP {exc.code} for {shown}: {hint}") from None
            last_reason = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last_reason = str(getattr(exc, "reason", exc))
        if attempt + 1 < attempts:
            wait = config.retry_wait * 2**attempt
            log.warning(
                "cannot open %s (%s); retry %d in %.1fs", shown, last_reason, attempt + 1, wait
            )
            time.sleep(wait)
    raise ShardUnreachableError(
        f"cannot open {shown} after {attempts} attempts ({last_reason}); "
        "check the path/URL and the network, or remove it from --shards"
    )


# ---------------------------------------------------------------------------- decoding, crops


def decode_ir_png(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG bytes -> [H, W] uint8 or uint16 (gray; colour PNGs are converted). The size is
    checked against `max_pixels` before anything is inflated."""
    return decode_png(data, max_pixels)


NPY_HEADER_BYTES = 64 * 1024  # a `.npy` member's header at most (numpy reads up to 10,000)


def member_size_limit(config: DataConfig) -> int:
    """The most bytes a tar member the loader reads may hold: a PNG (or, with --raw16, a raw
    16-bit `.npy` frame) of --max-pixels pixels cannot legitimately be larger, so a shard
    claiming more is refused before anything is read."""
    npy = 2 * config.max_pixels + NPY_HEADER_BYTES if config.raw16 else 0
    return max(max_png_bytes(config.max_pixels), npy)


def decode_raw_npy(data: bytes, max_pixels: int) -> np.ndarray:
    """A `.npy` member (the raw frame kept by `shard --keep-16bit`) -> [H, W] uint16, exactly."""
    image = np.load(io.BytesIO(data), allow_pickle=False)
    if image.ndim != 2 or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"npy member holds {image.dtype} {image.shape}, not a [H, W] frame")
    if image.size > max_pixels:
        raise ValueError(f"{image.shape[1]}x{image.shape[0]} exceeds the {max_pixels}-pixel cap")
    return image


def stretch_range(image: np.ndarray) -> tuple[float, float]:
    """0.5/99.5 percentiles of a 16-bit frame (on a strided view: same answer, 16x cheaper)."""
    view = image[::4, ::4]
    low, high = np.percentile(view, (0.5, 99.5))
    return float(low), float(max(high, low + 1.0))


def to_uint8(image: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def random_resized_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) with torchvision's RandomResizedCrop.get_params rules.

    Hand-written because torchvision's draws from torch's global RNG; this one takes a
    per-sample generator, which makes the stream reproducible and resumable."""
    area = height * width
    log_ratio = (np.log(ratio[0]), np.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = np.exp(rng.uniform(*log_ratio))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: central crop at the clamped aspect ratio
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_bicubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[h, w] uint8 -> [H, W] uint8, bicubic with antialiasing: torchvision's resize with
    interpolation=3 (BICUBIC), as MAE, InfMAE and DuGI-MAE crop (PIL bicubic is the same
    filter). OpenCV's INTER_CUBIC would alias on downscaling, changing the crops' entropy.
    torch's kernel is called directly: torchvision's wrapper adds ~30% here, same pixels.
    Large crops go through `resize_bicubic_packed` (same pixels, ~1.7x faster)."""
    if image.shape[0] * image.shape[1] >= PACKED_RESIZE_PIXELS:
        return resize_bicubic_packed(image, size)
    tensor = torch.from_numpy(image)[None, None]  # [1, 1, h, w] view, no copy
    resized = torch.nn.functional.interpolate(
        tensor, size=size, mode="bicubic", antialias=True, align_corners=False
    )
    return resized[0, 0].numpy()


def _resize_columns(image: np.ndarray, rows: int) -> np.ndarray:
    """[h, w] uint8 with w % 4 == 0 -> [rows, w]: a vertical-only resize that treats each run
    of 4 columns as the channels of one pixel (a free view), where torch's uint8 kernel is
    fastest."""
    height, width = image.shape
    packed = torch.from_numpy(image).view(height, width // 4, 4).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(  # [1, 4, rows, w/4], planar memory
        packed, size=(rows, width // 4), mode="bicubic", antialias=True, align_corners=False
    )
    planes = out[0].numpy()  # [4, rows, w/4]
    return cv2.merge(list(planes)).reshape(rows, width)  # interleave: ~8x torch's permute copy


def resize_bicubic_packed(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`resize_bicubic`, pixel for pixel, as two vertical-only passes on 4-channel views.

    torch resizes a 1-channel uint8 image at ~1/4 of its per-pixel speed on 4-channel
    images (profiled). The separable filter runs horizontally first, then vertically, each
    rounded to uint8 as torch and PIL do; the horizontal pass is a vertical one on the
    transposed crop. Padding rows/columns up to a multiple of 4 are independent channels:
    they never mix with real pixels and are cut off."""
    out_h, out_w = size
    height, width = image.shape
    transposed = np.zeros((width, -(-height // 4) * 4), np.uint8)  # [w, h rounded up to 4]
    transposed[:, :height] = cv2.transpose(image)
    across = cv2.transpose(_resize_columns(transposed, out_w))[:height]  # [h, W]
    padded_w = -(-out_w // 4) * 4
    if padded_w != out_w:
        across = np.pad(across, ((0, 0), (0, padded_w - out_w)))
    return np.ascontiguousarray(_resize_columns(np.ascontiguousarray(across), out_h)[:, :out_w])


def crop_flip(
    image: np.ndarray, size: tuple[int, int], rng: np.random.Generator, config: DataConfig
) -> np.ndarray:
    """RandomResizedCrop (bicubic) + horizontal flip of a decoded frame -> [H, W] uint8.

    16-bit frames are stretched to 8 bits (range of the whole frame) before the resize."""
    top, left, h, w = crop_box(image.shape[0], image.shape[1], rng, config)
    crop = image[top : top + h, left : left + w]
    if crop.dtype == np.uint16:
        crop = to_uint8(crop, *stretch_range(image))
    return resize_flip(crop, size, rng, config)


def crop_box(
    height: int, width: int, rng: np.random.Generator, config: DataConfig
) -> tuple[int, int, int, int]:
    return random_resized_crop_box(height, width, rng, (config.scale_min, config.scale_max))


def resize_flip(
    crop: np.ndarray, size: tuple[int, int], rng: np.random.Generator, config: DataConfig
) -> np.ndarray:
    """[h, w] uint8 crop -> [H, W] uint8: the bicubic resize, then the flip draw."""
    out = resize_bicubic(crop, size)
    if rng.random() < config.hflip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def crop_png(
    data: bytes, size: tuple[int, int], rng: np.random.Generator, config: DataConfig
) -> np.ndarray:
    """PNG bytes -> RandomResizedCrop + flip [H, W] uint8, decoding only the crop's rows and
    columns (pretrain.pngcrop). The same pixels and draws as `crop_flip(decode_ir_png(...))`:
    the box comes from the header's size before anything is inflated. A 16-bit frame is
    decoded whole: its 8-bit stretch takes the range of the whole frame."""
    header = read_header(data)
    check_pixels(header, config.max_pixels)
    if header.bit_depth == 16:
        frame = decode_box(data, header, (0, 0, header.height, header.width))
        return crop_flip(frame, size, rng, config)
    crop = decode_box(data, header, crop_box(header.height, header.width, rng, config))
    return resize_flip(crop, size, rng, config)


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ---------------------------------------------------------------------------- the stream


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


@dataclass
class ShardStream(torch.utils.data.IterableDataset):
    """Infinite batches `(images [B, 1, H, W] uint8, position [6] int64)` for one process.

    position = (logical_worker, pass_index, offset, bad_samples, shard_errors, batches) of the
    batch's worker after it. Workers are split by node (rank) then by loader worker; in
    `resampled` mode each worker draws shards with replacement, otherwise each pass is a seeded
    permutation of the list cut into disjoint per-(rank, worker) shares.
    """

    urls: list[str]
    config: DataConfig
    image_size: tuple[int, int]  # (H, W) of the crops
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 1  # logical workers (max(1, DataLoader workers))
    first_worker: int = 0  # logical id played by physical worker 0 (continues the round-robin)
    positions: list[dict[str, int]] = field(default_factory=list)  # per logical worker
    shard_lengths: dict[str, int] = field(default_factory=dict)  # shard_key(url) -> samples
    shard_sums: dict[str, str] = field(default_factory=dict)  # shard_key(url) -> sha256

    def __post_init__(self) -> None:
        super().__init__()
        self._failed: dict[int, list[str]] = {}  # worker -> shards that failed (resampled)
        # worker -> shards whose bytes were checked against their sha256 (True: they match)
        self._checked: dict[int, dict[str, bool]] = {}
        self._opened: dict[int, list[int]] = {}  # worker -> [shards opened so far]
        self.image_size = as_hw(self.image_size)
        shares = self.world_size * self.num_workers
        if not self.config.resampled and len(self.urls) < shares:
            raise ValueError(
                f"{len(self.urls)} shards cannot be split over {self.world_size} ranks x "
                f"{self.num_workers} workers (a rank without shards stalls DDP); "
                "use --resampled, fewer --workers, or more shards"
            )

    # -- per-worker pieces
    def _logical_worker(self) -> int:
        info = torch.utils.data.get_worker_info()
        physical = 0 if info is None else info.id
        return (physical + self.first_worker) % self.num_workers

    def pass_shards(self, worker: int, pass_index: int) -> list[str]:
        """The shards one worker reads in one pass, in order.

        Hand-written instead of webdataset's ResampledShards / split_by_node / split_by_worker:
        those keep their epoch counter inside the object and read the worker id themselves,
        so a saved position could not be replayed (and the round-robin not be continued).
        Resampled draws are weighted by shard length (when _info.json gives them all), so
        every sample is equally likely however unevenly the shards are filled."""
        shares = self.world_size * self.num_workers
        share = self.rank * self.num_workers + worker
        if self.config.resampled:
            rng = random.Random(_seed(self.seed, self.rank, worker, pass_index, 11))
            # at least a few draws per pass, so a pass's failure share means something
            count = max(len(self.urls) // shares, min(len(self.urls), 8))
            return rng.choices(self.urls, weights=self._draw_weights(), k=count)
        order = list(self.urls)
        random.Random(_seed(self.seed, pass_index, 13)).shuffle(order)  # same on every rank
        return order[share::shares]

    def _draw_weights(self) -> list[int] | None:
        lengths = [self.shard_lengths.get(shard_key(url)) for url in self.urls]
        if any(n is None for n in lengths) or not any(lengths):
            return None  # unknown lengths: uniform over shards
        return lengths  # type: ignore[return-value]

    def _drawable(self) -> set[str]:
        """Shards a resampled pass can draw (a weight of 0 is never drawn)."""
        weights = self._draw_weights() or [1] * len(self.urls)
        return {url for url, weight in zip(self.urls, weights, strict=True) if weight}

    def _pass_samples(self, urls: list[str]) -> int | None:
        """Samples in a pass's shards, if _info.json gives every length."""
        lengths = [self.shard_lengths.get(shard_key(url)) for url in urls]
        return None if any(n is None for n in lengths) else sum(lengths)  # type: ignore[arg-type]

    # Tar members the stream reads; the others (.json, .cls) are skipped unread (profiled:
    # reading and grouping them cost ~10% of a sample's time besides the PNG decode).
    members: tuple[str, ...] = (".png",)

    def _wanted(self, name: str) -> bool:
        return name.endswith(self.members) or (self.config.raw16 and name.endswith(".npy"))

    def _raw_samples(
        self, urls: list[str], worker_id: int, stats: WorkerPosition
    ) -> Iterator[dict[str, Any]]:
        """Raw samples of a pass's shards. A shard that cannot be opened (after its retries),
        is corrupt, ends early or stalls past --read-deadline is skipped and counted; when more
        than --max-shard-failures of the pass's shards fail without giving a sample, the run
        stops, naming them."""
        current = {"url": "", "failed": False, "count": 0}
        # A resampled pass draws from the whole list (the same shard maybe twice, another not
        # at all): its share counts against every shard it may draw, and a failed shard stays
        # failed for the worker's later passes, so each one is tried before the run stops.
        resampled = self.config.resampled
        distinct = len(set(self.urls)) if resampled else len(set(urls))
        failed = self._failed.setdefault(worker_id, []) if resampled else []
        stats_opened = self._opened.setdefault(worker_id, [0])
        checked = self._checked.setdefault(worker_id, {})

        def fail(url: str, reason: str) -> None:
            stats.shard_errors += 1
            log.warning("skipping shard %s: %s", redact_url(url), reason)
            if current["count"]:
                return  # it gave samples before failing: counted, but it is not lost
            failed.append(url)
            if len(failed) > self.config.max_shard_failures * distinct:
                names = ", ".join(redact_url(u) for u in failed[:3])
                more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
                raise ShardUnreachableError(
                    f"{len(failed)} of the {distinct} shards of a pass failed (more than "
                    f"--max-shard-failures {self.config.max_shard_failures:g}): {names}{more}; "
                    f"last: {reason.split('; ')[0]}; check them with `inf590k verify` or the network"
                )

        def skip_corrupt(exn: Exception) -> bool:
            if isinstance(exn, ShardUnreachableError):
                raise exn
            if not current["failed"]:
                current["failed"] = True
                fail(current["url"], _one_line(exn))
            return True

        def check_length(url: str) -> None:
            # A shard cut at a sample boundary and padded with zero blocks (or a tar that ends
            # before a second one concatenated to it) reads "cleanly" as a shorter tar;
            # _info.json's shard_lengths catch it.
            expected = self.shard_lengths.get(shard_key(url))
            if not current["failed"] and expected is not None and current["count"] < expected:
                fail(url, f"ended after {current['count']} of {expected} samples")

        def check_sum(url: str, stream: HashingReader) -> None:
            matches = stream.matches()
            checked[url] = matches
            if not matches:
                current["failed"] = True
                stats.shard_errors += 1
                log.warning(
                    "shard %s does not match its sha256 in %s (replaced or corrupt): its "
                    "samples of this pass were read, it is not read again; run `inf590k verify`",
                    redact_url(url),
                    SUMS_PATH,
                )

        def opened() -> Iterator[dict[str, Any]]:
            for url in urls:
                if url in failed or checked.get(url) is False:  # not retried, not read again
                    continue
                log.info(
                    "rank %d worker %d pass %d reads %s",
                    self.rank,
                    worker_id,
                    stats.pass_index,
                    redact_url(url),
                )
                current.update(url=url, failed=False, count=0)
                try:
                    stream = open_url(url, self.config)
                except NetworkDisabledError:
                    raise
                except ShardUnreachableError as exc:
                    current["failed"] = True
                    fail(url, str(exc))
                    continue
                stats_opened[0] += 1
                expected = self.shard_sums.get(shard_key(url))
                if expected and url not in checked:  # each shard once per worker: amortised
                    stream = HashingReader(stream, expected)
                try:
                    yield {"url": url, "stream": stream}
                    if isinstance(stream, HashingReader) and not current["failed"]:
                        check_sum(url, stream)
                finally:
                    stream.close()
                check_length(url)

        def counted(samples: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
            for sample in samples:
                if sample.get("__url__") == current["url"]:
                    current["count"] += 1
                yield sample

        limit = member_size_limit(self.config)
        files = _tar_files(opened(), self._wanted, limit, handler=skip_corrupt)
        return counted(group_by_keys(files, handler=skip_corrupt))

    def _pass(self, worker: int, stats: WorkerPosition) -> Iterator[tuple[int, dict[str, Any]]]:
        """(offset, raw sample) of one shuffled pass."""
        urls = self.pass_shards(worker, stats.pass_index)
        raw = self._raw_samples(urls, worker, stats)
        rng = random.Random(_seed(self.seed, self.rank, worker, stats.pass_index, 17))
        initial = self.config.shuffle_initial
        pass_samples = self._pass_samples(urls)
        if pass_samples is not None:  # never wait for a buffer larger than the pass's data
            initial = max(1, min(initial, pass_samples // 2))
        shuffled = bounded_shuffle(
            iter(raw), self.config.shuffle_buffer, initial, rng, self.config.shuffle_bytes
        )
        return enumerate(shuffled)

    def decode(self, sample: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        if self.config.raw16 and "npy" in sample:
            raw = decode_raw_npy(sample["npy"], self.config.max_pixels)
            return crop_flip(raw, self.image_size, rng, self.config)
        if "png" not in sample:
            raise ValueError(f"sample {sample.get('__key__')} has no .png member")
        return crop_png(sample["png"], self.image_size, rng, self.config)

    def samples(self, worker: int, stats: WorkerPosition) -> Iterator[np.ndarray]:
        """Decoded crops forever, advancing `stats` (position and counters) as it goes."""
        while True:
            start, produced = stats.offset, 0
            opened_before = self._opened.get(worker, [0])[0]
            for offset, sample in self._pass(worker, stats):
                if offset < start:  # resume: replay bytes up to the saved offset, no decoding
                    continue
                stats.offset = offset + 1
                rng = np.random.default_rng(
                    [self.seed, self.rank, worker, stats.pass_index, offset]
                )
                try:
                    image = self.decode(sample, rng)
                except Exception as exc:  # any bad sample is skipped and counted
                    stats.bad_samples += 1
                    log.warning("skipping sample %s: %s", sample.get("__key__"), exc)
                    continue
                produced += 1
                yield image
            drawn_failed_only = (
                self.config.resampled
                and self._opened.get(worker, [0])[0] == opened_before
                and bool(self._drawable() - set(self._failed.get(worker, [])))
            )
            if produced == 0 and start == 0 and not drawn_failed_only:
                raise ShardUnreachableError(
                    f"worker {worker} of rank {self.rank} read no usable sample in a whole pass "
                    f"over {len(self.pass_shards(worker, stats.pass_index))} shards; "
                    "check the shards with `inf590k verify`"
                )
            stats.pass_index, stats.offset = stats.pass_index + 1, 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if torch.utils.data.get_worker_info() is None:
            yield from self._batches()
            return
        try:
            yield from self._batches()
        except Exception as exc:  # noqa: BLE001 - handed to the main process, raised there
            log.debug("loader worker failed", exc_info=True)
            yield WorkerFailure.of(exc)  # type: ignore[misc]

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        cv2.setNumThreads(1)  # one decode thread per loader worker; workers give parallelism
        worker = self._logical_worker()
        saved = self.positions[worker] if worker < len(self.positions) else {}
        stats = WorkerPosition(**saved)
        batches = 0
        stream = self.samples(worker, stats)
        height, width = self.image_size
        while True:
            batch = np.empty((self.config.batch_size, 1, height, width), np.uint8)  # [B, 1, H, W]
            for i in range(self.config.batch_size):
                batch[i, 0] = next(stream)
            batches += 1
            position = torch.tensor(
                [
                    worker,
                    stats.pass_index,
                    stats.offset,
                    stats.bad_samples,
                    stats.shard_errors,
                    batches,
                ],
                dtype=torch.int64,
            )
            yield torch.from_numpy(batch), position


class HashingReader(io.RawIOBase):
    """A shard's byte stream that hashes what passes through it; `matches()` reads the rest
    (the end-of-archive padding, or anything appended) and compares with the expected sha256.
    Not seekable, so the tar reader reads skipped members instead of seeking past them."""

    def __init__(self, stream: IO[bytes], expected: str) -> None:
        super().__init__()
        self._stream = stream
        self._expected = expected
        self._digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._digest.update(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def matches(self) -> bool:
        while self.read(1 << 20):
            pass
        return self._digest.hexdigest() == self._expected

    def close(self) -> None:
        self._stream.close()
        super().close()


def bounded_shuffle(
    data: Iterator[dict[str, Any]],
    size: int,
    initial: int,
    rng: random.Random,
    max_bytes: int,
) -> Iterator[dict[str, Any]]:
    """webdataset's `_shuffle` (the same draws from `rng`, so the same order while the buffer
    stays under `max_bytes`), with the buffer also bounded in bytes: a shard of huge members
    cannot make a worker hold `size` of them."""
    initial = min(initial, size)
    buffer: list[dict[str, Any]] = []
    held = 0

    def add(sample: dict[str, Any]) -> None:
        nonlocal held
        buffer.append(sample)
        held += _sample_bytes(sample)

    def pick() -> dict[str, Any]:
        nonlocal held
        index = rng.randint(0, len(buffer) - 1)
        sample = buffer[index]
        buffer[index] = buffer[-1]
        buffer.pop()
        held -= _sample_bytes(sample)
        return sample

    for sample in data:
        add(sample)
        if len(buffer) < size and held < max_bytes:
            try:
                add(next(data))
            except StopIteration:
                pass
        if len(buffer) >= initial or held >= max_bytes:
            yield pick()
    while buffer:
        yield pick()


def _sample_bytes(sample: dict[str, Any]) -> int:
    return sum(len(v) for v in sample.values() if isinstance(v, bytes | bytearray))


def _tar_files(
    sources: Iterator[dict[str, Any]],
    wanted: Callable[[str], bool],
    max_size: int,
    handler: Callable[[Exception], bool],
) -> Iterator[dict[str, Any]]:
    """webdataset's file samples ({"fname", "data", "__url__"}) of each opened shard, read by
    pretrain.tarstream (~10x less time per member than tarfile's stream mode, profiled), and
    an empty dict after each shard, which makes `group_by_keys` hand out the shard's last
    sample before the next shard is opened. A wanted member over `max_size` bytes fails its
    shard unread. An error in a shard goes to `handler`, which skips the rest of that shard
    or raises."""
    for source in sources:
        try:
            for name, data in tar_members(source["stream"], wanted, max_size=max_size):
                yield {"fname": name, "data": data, "__url__": source["url"]}
            yield {}
        except Exception as exc:  # noqa: BLE001 - the handler decides (skip or stop)
            if not handler(exc):
                return


def _one_line(exc: BaseException) -> str:
    """An exception as one line (webdataset appends the stream object and URL to its args)."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return " ".join(text.split())[:300]


@dataclass(frozen=True)
class WorkerFailure:
    """An exception of a loader worker, sent as an item so the main process raises it as is:
    the DataLoader would wrap it in a page of worker traceback instead."""

    error: BaseException

    @classmethod
    def of(cls, exc: BaseException) -> WorkerFailure:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - unpicklable exceptions travel as their text
            exc = RuntimeError(f"{type(exc).__name__}: {exc}")
        return cls(exc)


class StreamLoader(torch.utils.data.DataLoader):
    """DataLoader whose workers' errors reach the caller as with `--workers 0`: one line."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        for item in super().__iter__():
            if isinstance(item, WorkerFailure):
                raise item.error
            yield item


def make_loader(stream: ShardStream, workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """DataLoader over already-batched items; workers take batches in round-robin order."""
    return StreamLoader(
        stream,
        batch_size=None,
        # Its own generator: starting an iterator would otherwise draw from the global torch
        # RNG and shift the model's random stream after a resume.
        generator=torch.Generator().manual_seed(stream.seed),
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


class StreamTracker:
    """Main-process view of the workers' positions, fed with each consumed batch's position."""

    def __init__(
        self, num_workers: int, positions: list[dict[str, int]] | None = None, batches: int = 0
    ) -> None:
        self.num_workers = num_workers
        self.positions = (
            [dict(p) for p in positions]
            if positions
            else [WorkerPosition().as_dict() for _ in range(num_workers)]
        )
        self.batches = batches  # micro-batches consumed by the training loop

    def update(self, position: torch.Tensor) -> None:
        worker, pass_index, offset, bad, errors, _ = (int(v) for v in position.tolist())
        self.positions[worker] = {
            "pass_index": pass_index,
            "offset": offset,
            "bad_samples": bad,
            "shard_errors": errors,
        }
        self.batches += 1

    @property
    def first_worker(self) -> int:
        return self.batches % self.num_workers

    def totals(self) -> dict[str, int]:
        return {
            "bad_samples": sum(p["bad_samples"] for p in self.positions),
            "shard_errors": sum(p["shard_errors"] for p in self.positions),
        }

    def state(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "batches": self.batches,
            "positions": [dict(p) for p in self.positions],
        }


def shard_key(url: str) -> str:
    """`<bin>/<shard>.tar` of a URL: how _info.json names a shard, however it is reached."""
    path = urllib.parse.urlparse(url).path if "://" in url else url
    return "/".join(path.rstrip("/").split("/")[-2:])


def dataset_info(
    config: DataConfig, urls: Sequence[str], info_url: str | None | bool = False
) -> DatasetInfo | None:
    """The dataset's _info.json (--info, else found next to the shards), if there is one,
    narrowed to the shards `urls` select: num_samples is what one epoch of them reads.
    `info_url`: where the caller already found it (None: not found), not looked for again."""
    if info_url is False:
        info_url = config.info or find_info_url(urls, config)
    return read_info(info_url, config.split, config).select(urls) if info_url else None


def expected_lengths(info: DatasetInfo | None) -> dict[str, int]:
    if info is None or len(info.shard_lengths) != len(info.filenames):
        return {}
    return {shard_key(u): n for u, n in zip(info.filenames, info.shard_lengths, strict=True)}


def epoch_samples(config: DataConfig, urls: Sequence[str]) -> int | None:
    """Samples per epoch: --samples-per-epoch, else the selected shards' samples (_info.json)."""
    if config.samples_per_epoch:
        return config.samples_per_epoch
    info = dataset_info(config, urls)
    return info.num_samples if info else None


def loader_for(
    config: DataConfig,
    image_size: int | tuple[int, int],
    *,
    seed: int,
    rank: int,
    world_size: int,
    pin_memory: bool,
    resume_state: dict[str, Any] | None = None,
    urls: list[str] | None = None,
    info: DatasetInfo | None = None,
) -> tuple[torch.utils.data.DataLoader, StreamTracker]:
    """The process's DataLoader and the tracker that must see each batch it consumes."""
    urls = urls if urls is not None else expand_shard_urls(config.shards, config.split, config)
    num_workers = max(1, config.workers)
    positions, batches = None, 0
    if resume_state and resume_state.get("num_workers") == num_workers:
        positions, batches = resume_state["positions"], int(resume_state["batches"])
    elif resume_state:
        log.warning(
            "saved data position is for %s workers, not %s: the stream restarts with a new seed",
            resume_state.get("num_workers"),
            num_workers,
        )
        seed = _seed(seed, int(resume_state.get("batches", 0)))
    tracker = StreamTracker(num_workers, positions, batches)
    stream = ShardStream(
        urls=urls,
        config=config,
        image_size=image_size,
        seed=seed,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        first_worker=tracker.first_worker,
        positions=[dict(p) for p in tracker.positions],
        shard_lengths=expected_lengths(info),
        shard_sums=dict(info.sums) if info is not None else {},
    )
    return make_loader(stream, config.workers, pin_memory), tracker


StreamFactory = Callable[..., tuple[torch.utils.data.DataLoader, StreamTracker]]
