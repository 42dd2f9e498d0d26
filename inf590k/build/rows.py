"""One source file -> its catalog rows (decoded once, in a worker), and a row -> its stored
pixels again (for shard and dedupe's feature model).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from inf590k.build import catalog as cat
from inf590k.execution import progress
from inf590k.fsutil import file_sha256
from inf590k.inputs.fingerprint import fingerprint
from inf590k.inputs.headers import OPENCV_PIXEL_LIMIT, RejectedImage
from inf590k.inputs.imageio import (
    ImagePolicy,
    ProcessedImage,
    decode,
    process_array,
    process_image_bytes,
    stretch_to_8bit,
    supported_dtype,
    to_grey,
)
from inf590k.inputs.manifest import (
    Manifest,
)
from inf590k.inputs.sources import (
    DamagedMember,
    SourceReader,
    member_suffix,
)


@dataclass(frozen=True)
class Task:
    """One file of a source, with the scan's decision; bytes only for streamed tar members."""

    relpath: str
    size: int
    decision: str  # "decode", "video", or "" (an exclusion/rejection already decided)
    status: str = cat.STATUS_OK
    reason: str = ""
    data: bytes | None = None
    occurrence: int = 0  # a repeated archive member name (see sources.flag_name_problems)
    order: int = 0  # position in the archive: tar sources are chunked in archive order
    offset: int = -1  # data offset in an uncompressed tar: the worker reads the member itself


DECISIONS = ("", "decode", "video")  # Task.decision as its index in the task columns
STATUSES = (cat.STATUS_OK, cat.STATUS_EXCLUDED, cat.STATUS_REJECTED)  # Task.status likewise

# A source's tasks as columns: what the listing returns and the driver plans with (no Python
# object per file). `reason` is null where empty; `sequence`: a decoded frame of a frame
# sequence (the video stride may leave it out).
TASK_SCHEMA = pa.schema(
    [
        ("relpath", pa.large_string()),  # 64-bit offsets: any number of files joins in one column
        ("size", pa.int64()),
        ("decision", pa.int8()),
        ("status", pa.int8()),
        ("reason", pa.string()),
        ("occurrence", pa.int64()),
        ("order", pa.int64()),
        ("offset", pa.int64()),
        ("sequence", pa.bool_()),
    ]
)


def tasks_table(tasks: list[Task], sequence: list[bool] | None = None) -> pa.Table:
    """Tasks as TASK_SCHEMA columns (`sequence`: the in-sequence flag of each, else none)."""
    columns = {
        "relpath": [t.relpath for t in tasks],
        "size": [t.size for t in tasks],
        "decision": [DECISIONS.index(t.decision) for t in tasks],
        "status": [STATUSES.index(t.status) for t in tasks],
        "reason": [t.reason or None for t in tasks],
        "occurrence": [t.occurrence for t in tasks],
        "order": [t.order for t in tasks],
        "offset": [t.offset for t in tasks],
        "sequence": sequence if sequence is not None else [False] * len(tasks),
    }
    return pa.table(columns, schema=TASK_SCHEMA)


def table_tasks(table: pa.Table) -> list[Task]:
    """The Task of each row of a TASK_SCHEMA table (in a worker: one unit's rows)."""
    names = ("relpath", "size", "decision", "status", "reason", "occurrence", "order", "offset")
    relpath, size, decision, status, reason, occurrence, order, offset = (table.column(n).to_pylist() for n in names)
    return [
        Task(r, s, DECISIONS[d], STATUSES[st], why or "", None, occ, o, off)
        for r, s, d, st, why, occ, o, off in zip(relpath, size, decision, status, reason, occurrence, order, offset, strict=True)
    ]


@dataclass(frozen=True)
class UnitTasks:
    """A work unit's rows of the task columns (its own copy: pickling a slice would send the
    whole table), `lengths` rows per chunk; `data`: per row, the streamed bytes of a
    compressed tar's member, or why it could not be read (None: read by the worker)."""

    table: pa.Table
    lengths: tuple[int, ...]
    data: tuple[bytes | DamagedMember | None, ...] | None = None

    def chunks(self) -> list[list[Task]]:
        tasks = table_tasks(self.table)
        if self.data is not None:
            tasks = [attach(task, payload) for task, payload in zip(tasks, self.data, strict=True)]
        ends = np.cumsum(self.lengths).tolist()
        return [tasks[end - length : end] for end, length in zip(ends, self.lengths, strict=True)]


def attach(task: Task, payload: bytes | DamagedMember | None) -> Task:
    """A task with its streamed bytes; rejected with the reason when they could not be read."""
    if payload is None:
        return task
    if isinstance(payload, DamagedMember):
        return replace(task, decision="", status=cat.STATUS_REJECTED, reason=str(payload))
    return replace(task, data=payload)


@dataclass(frozen=True)
class SourceJob:
    manifest: Manifest
    root: Path
    kind: str
    policy: ImagePolicy
    build: Path


def make_uid(source: str, relpath: str, frame: int = -1, occurrence: int = 0) -> str:
    """Stable sample key: readable slug of the path + a digest for uniqueness; no dots."""
    stem = posixpath.splitext(relpath)[0]
    slug = re.sub(r"[^A-Za-z0-9]+", "_", stem).strip("_")[-60:]
    named = relpath if not occurrence else f"{relpath}\0{occurrence}"
    digest = hashlib.sha1(named.encode("utf-8", "backslashreplace")).hexdigest()[:8]
    uid = f"{source}-{slug}-{digest}"
    return f"{uid}-f{frame:06d}" if frame >= 0 else uid


def split_of(relpath: str) -> str:
    match = SPLIT_PATTERN.search(posixpath.dirname(relpath))
    if not match:
        return ""
    word = match.group(1).lower()
    return {"validation": "val"}.get(word, word)


def base_row(manifest: Manifest, task: Task, frame: int = -1) -> dict:
    row = cat.empty_row()
    row.update(
        uid=make_uid(manifest.id, task.relpath, frame, task.occurrence),
        source=manifest.id,
        relpath=task.relpath,
        frame=frame,
        split=split_of(task.relpath),
        license=manifest.license,
        modality=manifest.modality,
        tags=list(manifest.tags),
        status=task.status,
        reason=task.reason,
        file_bytes=task.size,
    )
    return row


def image_row(row: dict, processed: ProcessedImage, file_sha256: str) -> dict:
    fp = fingerprint(processed.view8)
    row.update(
        file_sha256=file_sha256,
        pixel_sha256=fp.pixel_sha256,
        width=processed.width,
        height=processed.height,
        orig_width=processed.orig_width,
        orig_height=processed.orig_height,
        orig_channels=processed.orig_channels,
        orig_dtype=processed.orig_dtype,
        bit_depth=processed.bit_depth,
        grey_diff=processed.grey_diff,
        normalisation=processed.normalisation,
        crop_box=list(processed.crop_box),
        entropy=fp.entropy,
        phash=fp.phash,
        dhash=fp.dhash,
        reason=processed.note,  # "" or a remark on a kept file (status stays ok)
    )
    return row


def rejected(row: dict, reason: str) -> dict:
    row.update(status=cat.STATUS_REJECTED, reason=reason)
    return row


def policy_for(manifest: Manifest, policy: ImagePolicy) -> ImagePolicy:
    """The source's own rules (border, colour, zero-border crop) on top of the global policy."""
    return replace(
        policy,
        border_width=manifest.border.width if manifest.border else 0,
        allow_colour=policy.allow_colour or manifest.channel_policy == "allow_colour",
        crop_zero_borders=policy.crop_zero_borders and manifest.crop_zero_borders,
    )


def read_task(task: Task, reader: SourceReader) -> bytes:
    """The file's bytes: streamed in by the caller (compressed tar), read in place from an
    uncompressed tar, or read by name."""
    if task.data is not None:
        return task.data
    if task.offset >= 0:
        return reader.read_at(task.offset, task.size)
    return reader.read(task.relpath)


def decode_rows(job: SourceJob, task: Task, reader: SourceReader) -> list[dict]:
    row = base_row(job.manifest, task)
    try:
        data = read_task(task, reader)
    except DamagedMember as err:
        return [rejected(row, str(err))]
    except OSError as err:
        return [rejected(row, f"unreadable ({err.strerror or err})")]
    row["file_bytes"] = len(data)
    try:
        processed = process_image_bytes(data, job.policy)
    except RejectedImage as err:
        return [rejected(row, str(err))]
    return [image_row(row, processed, hashlib.sha256(data).hexdigest())]


def video_path(job: SourceJob, task: Task, reader: SourceReader, scratch: Path) -> Path:
    """OpenCV reads videos from paths: archive members go to a scratch file in the build dir."""
    if job.kind == "folder":
        return job.root / task.relpath
    data = read_task(task, reader)
    target = scratch / f"video{member_suffix(task.relpath)}"
    target.write_bytes(data)
    return target


def iter_video_frames(path: Path, stride: int) -> Iterator[tuple[int, np.ndarray]]:
    capture = cv2.VideoCapture(str(path))
    try:
        index = 0
        while True:
            ok = capture.grab()
            if not ok:
                return
            if index % stride == 0:
                ok, frame = capture.retrieve()
                if ok:
                    yield index, frame
            index += 1
    finally:
        capture.release()


def video_rows(job: SourceJob, task: Task, reader: SourceReader) -> list[dict]:
    """One row per kept frame (every `video_stride`-th); one rejected row if nothing decodes."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(dir=job.build) as scratch:
        try:
            path = video_path(job, task, reader, Path(scratch))
        except DamagedMember as err:
            return [rejected(base_row(job.manifest, task), str(err))]
        except OSError as err:
            return [rejected(base_row(job.manifest, task), f"unreadable ({err.strerror or err})")]
        file_sha = file_sha256(path)
        for index, frame in iter_video_frames(path, job.manifest.video_stride):
            row = base_row(job.manifest, task, frame=index)
            try:
                rows.append(image_row(row, process_array(frame, job.policy), file_sha))
            except RejectedImage as err:
                rows.append(rejected(row, str(err)))
    return rows or [rejected(base_row(job.manifest, task), "not a decodable video")]


def process_chunk(job: SourceJob, tasks: list[Task]) -> list[dict]:
    rows: list[dict] = []
    read = 0  # files read, whatever became of them; decided ones are not on the bar
    with SourceReader(job.root) as reader:
        for task in tasks:
            if task.decision == "decode":
                rows.extend(decode_rows(job, task, reader))
            elif task.decision == "video":
                rows.extend(video_rows(job, task, reader))
                progress.tick()  # a video may take long: the bar moves past it at once
                continue
            else:
                rows.append(base_row(job.manifest, task))
                continue
            read += 1
    if read:  # once a chunk: a tick per file would cost the main process as much again
        progress.tick(read)
    return rows


def raise_opencv_pixel_limit(max_pixels: int) -> None:
    """OpenCV's backstop follows --max-pixels in worker processes started from now on (it is
    read when cv2 is imported; this process keeps the limit it started with)."""
    current = int(os.environ.get(OPENCV_PIXEL_LIMIT, "0") or 0)
    if max_pixels > current:
        os.environ[OPENCV_PIXEL_LIMIT] = str(max_pixels)


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe


def _grab_frame(path: Path, frame: int) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    try:
        capture.set(cv2.CAP_PROP_POS_FRAMES, frame)
        ok, image = capture.read()
    finally:
        capture.release()
    if not ok:
        raise RejectedImage(f"frame {frame} can no longer be read")
    return image


def load_stored_pixels(
    build: Path, row: Mapping, keep_16bit: bool = False, data: bytes | None = None
) -> np.ndarray:
    """Re-read a catalog row's file and return its stored form.

    [H, W] uint8 (the normalised view), or [H, W] uint16 when `keep_16bit` and the file was
    16-bit. Pass `data` when the caller already holds the file's bytes (batched archive reads:
    `SourceReader.read_many`).
    """
    info = cat.read_sources(build).get(row["source"])
    if info is None:
        raise KeyError(f"source {row['source']!r} is not in {Path(build) / cat.SOURCES_FILENAME}")
    policy = ImagePolicy(**info["policy"])
    root = Path(info["root"])
    if row["frame"] is not None and row["frame"] >= 0:
        array = _read_video_frame(build, root, row, data)
    else:
        if data is None:
            with SourceReader(root) as reader:
                data = reader.read(row["relpath"])
        array = decode(data, policy)
    return stored_form(array, row, policy, keep_16bit)


def _read_video_frame(build: Path, root: Path, row: Mapping, data: bytes | None) -> np.ndarray:
    if root.is_dir():
        return _grab_frame(root / row["relpath"], row["frame"])
    with tempfile.TemporaryDirectory(dir=build) as scratch:
        target = Path(scratch) / f"video{member_suffix(row['relpath'])}"
        target.write_bytes(data if data is not None else SourceReader(root).read(row["relpath"]))
        return _grab_frame(target, row["frame"])


def stored_form(array: np.ndarray, row: Mapping, policy: ImagePolicy, keep_16bit: bool) -> np.ndarray:
    """Apply the row's recorded crop, the grey conversion and the 16-bit stretch."""
    grey, _ = to_grey(supported_dtype(array), replace(policy, allow_colour=True))
    x0, y0, x1, y1 = row["crop_box"]
    cropped = np.ascontiguousarray(grey[y0:y1, x0:x1])
    if cropped.dtype == np.uint8 or (keep_16bit and cropped.dtype == np.uint16):
        return cropped
    view8, _ = stretch_to_8bit(cropped, policy)
    return view8


SPLIT_PATTERN = re.compile(r"(?:^|[_/-])(train|trainval|val|validation|test)(?:[_/-]|imgr|img|$)", re.I)
