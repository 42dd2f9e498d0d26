"""Build-stage lineage: what each stage of a build folder was built from, and one lock per folder.

Layout inside a build folder::

    BUILD/.lock                      flock'ed by the stage that runs; names its process
    BUILD/lineage/<stage>.json       written when the stage has finished: its options, the
                                     digest of the upstream record it read, its counts
    BUILD/lineage/<stage>.running    written when the stage starts changing files; removed
                                     when it finishes (left behind by a killed or failed run)

Stages form a chain: ingest -> dedupe -> bin -> shard. A stage starts only when every stage
before it has finished and is fresh: its record names the digest of the record upstream of it
as that record is now. Re-running ingest with other files, or dropping a source, makes dedupe
(and so bin and shard) stale; re-running it on unchanged sources keeps the same digest.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePath
from typing import Any

from inf590k.build import catalog as cat
from inf590k.build.locks import (
    LOCK_FILENAME,
    LineageError,
    build_lock,
    command_line,
    held_here,
    now,
)
from inf590k.fsutil import file_sha256, write_text_atomic
from inf590k.inputs.manifest import source_option

STAGES = ("ingest", "dedupe", "bin", "shard")
CATALOG_WRITERS = ("ingest", "dedupe", "bin")  # stages that write catalog parts
UPSTREAM = {"dedupe": "ingest", "bin": "dedupe", "shard": "bin"}
LINEAGE_DIRNAME = "lineage"
# Folders a stage may create inside a build folder: removed again when a command fails and
# leaves them empty.
STAGE_DIRNAMES = ("catalog", LINEAGE_DIRNAME, "dedupe", "bins")

# Catalog parts hashed by this process: path -> ((size, mtime_ns, inode), sha256).
_HASHED: dict[str, tuple[tuple[int, int, int], str]] = {}




class StageMissing(FileNotFoundError, LineageError):
    """An earlier stage has never run on this build folder."""


@dataclasses.dataclass(frozen=True)
class StageRecord:
    stage: str
    options: dict
    upstream: str | None  # digest of the upstream stage's record when this stage read it
    counts: dict
    summary: str  # the stage's one-line summary
    parts: str  # digest of the catalog part names (which sources/chunks it covered)
    generation: int = 0  # bumped whenever the stage changed files without other visible cause
    finished: str = ""
    # part name -> sha256 as the stage left the catalog: checked while no later stage has
    # written it, not part of the digest (an unchanged re-run keeps the later stages fresh)
    catalog: dict = dataclasses.field(default_factory=dict)

    @property
    def digest(self) -> str:
        described = {
            "stage": self.stage,
            "options": self.options,
            "upstream": self.upstream,
            "counts": self.counts,
            "parts": self.parts,
            "generation": self.generation,
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------- files


def lineage_dir(build: Path) -> Path:
    return Path(build) / LINEAGE_DIRNAME


def record_path(build: Path, stage: str) -> Path:
    return lineage_dir(build) / f"{stage}.json"


def running_path(build: Path, stage: str) -> Path:
    return lineage_dir(build) / f"{stage}.running"


def read_record(build: Path, stage: str) -> StageRecord | None:
    try:
        data = json.loads(record_path(build, stage).read_text())
        data.pop("digest", None)
        return StageRecord(**data)
    except (OSError, ValueError, TypeError):
        return None


def parts_digest(build: Path) -> str:
    names = [p.name for p in cat.part_paths(build)]
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


def catalog_contents(build: Path) -> dict[str, str]:
    """sha256 of every catalog part by name, and of the decision files of dedupe and bin by
    their path in the build folder: what the stage that last wrote the catalog left. A file
    is hashed again only when its size, mtime or inode changed (a no-op `build` asks this
    several times)."""
    contents = {}
    for path in [*cat.part_paths(build), *cat.decision_paths(build)]:
        info = path.stat()
        key = (info.st_size, info.st_mtime_ns, info.st_ino)
        cached = _HASHED.get(str(path))
        if cached is None or cached[0] != key:
            cached = _HASHED[str(path)] = (key, file_sha256(path))
        name = path.name if path.parent.name == cat.CATALOG_DIRNAME else path.relative_to(build).as_posix()
        contents[name] = cached[1]
    return contents


def _catalog_change(recorded: dict[str, str], now: dict[str, str]) -> str:
    """The first difference between two catalog contents, in words ('' when equal)."""
    for name in sorted(set(recorded) | set(now)):
        if name not in now:
            return f"{name} was removed"
        if name not in recorded:
            return f"{name} was added"
        if recorded[name] != now[name]:
            return f"{name} was edited"
    return ""


def plain(value: Any) -> Any:
    """Options as JSON values: paths and tuples become strings and lists."""
    return json.loads(json.dumps(value, default=str))


def resolved(value: Any) -> Any:
    """Paths made absolute (in tuples and lists too): `--out data` and `--out /abs/data` name
    the same folder, so they record the same options."""
    if isinstance(value, PurePath):
        return Path(value).resolve()
    if isinstance(value, (tuple, list)):
        return type(value)(resolved(v) for v in value)
    if isinstance(value, dict):
        return {k: resolved(v) for k, v in value.items()}
    return value


def config_options(config: Any, ignore: tuple[str, ...]) -> dict:
    """A stage config's fields that decide its output (not the build path, workers, progress),
    paths resolved."""
    fields = dataclasses.asdict(config)
    return plain({k: resolved(v) for k, v in fields.items() if k not in ignore})


def summary_counts(summary: Any) -> dict:
    """The numbers of a stage summary (ints, and dicts of them), for the record."""
    if not dataclasses.is_dataclass(summary):
        return {}
    counts = {}
    for field in dataclasses.fields(summary):
        value = getattr(summary, field.name)
        if isinstance(value, (int, dict)) and not isinstance(value, bool):
            counts[field.name] = value
    return plain(counts)


def recorded_counts(summary: Any) -> dict:
    """A summary's own `lineage_counts` (stable numbers only) when it has them, else its
    integer fields."""
    counts = getattr(summary, "lineage_counts", None)
    return summary_counts(summary) if counts is None else counts


def mark_running(build: Path, stage: str) -> None:
    """Called when a stage starts changing files: until it finishes, later stages refuse."""
    described = {"stage": stage, "pid": os.getpid(), "command": command_line(), "started": now()}
    write_text_atomic(running_path(build, stage), json.dumps(described, indent=1))


def finish(
    build: Path, stage: str, options: dict, summary: Any, changed: bool = False
) -> StageRecord:
    """Write the stage's record (what it read, its options and counts); clear its marker."""
    build = Path(build)
    if stage in OWN_FILES and any(_rewrote_parts(build, s) for s in OWN_FILES):
        _adopt_earlier_layout(build)
    upstream_stage = UPSTREAM.get(stage)
    upstream = read_record(build, upstream_stage) if upstream_stage else None
    previous = read_record(build, stage)
    generation = previous.generation if previous else 0
    if changed or previous is None:
        generation += 1
    record = StageRecord(
        stage=stage,
        options=plain(options),
        upstream=upstream.digest if upstream else None,
        counts=plain(recorded_counts(summary)),
        summary=str(summary),
        parts=parts_digest(build),
        generation=generation,
        finished=now(),
        catalog=catalog_contents(build),
    )
    if previous is None or previous.digest != record.digest or running_path(build, stage).exists():
        body = {**dataclasses.asdict(record), "digest": record.digest}
        write_text_atomic(record_path(build, stage), json.dumps(body, indent=1), fsync=True)
    running_path(build, stage).unlink(missing_ok=True)
    return record






# ----------------------------------------------------------------------------- refusal


def rerun_command(build: Path, stage: str) -> str:
    """The command that (re)makes a stage of this build folder."""
    if stage != "ingest":
        extra = " --out DATASET" if stage == "shard" else ""
        return f"inf590k {stage} --build {shlex.quote(str(build))}{extra}"
    try:
        recorded = cat.read_sources(build)
    except (OSError, ValueError):
        recorded = {}
    sources = " ".join(
        "--source "
        + shlex.quote(source_option(source, info, info.get("root", "PATH")))
        for source, info in sorted(recorded.items())
    )
    return f"inf590k ingest --build {shlex.quote(str(build))} {sources or '--source ID=PATH'}"


def problem(build: Path, stage: str) -> str:
    """Why `stage` is not finished and fresh ('' when it is)."""
    build = Path(build)
    command = rerun_command(build, stage)
    if running_path(build, stage).exists():
        return (
            f"`inf590k {stage}` on {build} did not finish (killed or failed): run `{command}` first"
        )
    record = read_record(build, stage)
    if record is None:
        if stage == "ingest" and cat.part_paths(build):
            return ""  # a catalog made without the ingest stage (by hand, or by a tool)
        return f"`inf590k {stage}` has not run on {build}: run `{command}` first"
    upstream_stage = UPSTREAM.get(stage)
    if upstream_stage:
        upstream = read_record(build, upstream_stage)
        if record.upstream != (upstream.digest if upstream else None):
            return (
                f"`inf590k {stage}` on {build} is stale (`inf590k {upstream_stage}` ran after it): "
                f"run `{command}` first"
            )
    elif record.parts != parts_digest(build):
        return (
            f"the catalog of {build} lost or gained part files after ingest: run `{command}` first"
        )
    return _catalog_problem(build, stage, record)


# The catalog files each stage writes, by their name in a record's `catalog`: ingest its parts
# (bare names), dedupe and bin their decision files.
OWN_FILES = {"dedupe": cat.DECISIONS_PATH, "bin": cat.BIN_ASSIGN_PATH}


def _owns(stage: str, name: str) -> bool:
    return "/" not in name if stage == "ingest" else name == OWN_FILES.get(stage)


def _owned(stage: str, contents: dict[str, str]) -> dict[str, str]:
    return {name: digest for name, digest in contents.items() if _owns(stage, name)}


def _rewrote_parts(build: Path, stage: str) -> bool:
    """Whether `stage` ran in the earlier layout, rewriting the parts (its record names no file
    of its own): the parts no longer match the records before it."""
    record = read_record(build, stage)
    return record is not None and not any(_owns(stage, name) for name in record.catalog)


def _catalog_problem(build: Path, stage: str, record: StageRecord) -> str:
    """Why the catalog is not as `stage` left it ('' if it is): the last stage that wrote it
    checks every file, an earlier one the files it wrote itself (no later stage rewrites them),
    so a part or decision file edited, replaced or removed by hand never reaches a later stage,
    even one re-run after the edit."""
    later = [
        s for s in STAGES[STAGES.index(stage) + 1 :]
        if s in CATALOG_WRITERS and (record_path(build, s).exists() or running_path(build, s).exists())
    ]
    if not record.catalog or any(_rewrote_parts(build, s) for s in later):
        return ""
    recorded, now = record.catalog, catalog_contents(build)
    if later:
        recorded, now = _owned(stage, recorded), _owned(stage, now)
    change = _catalog_change(recorded, now)
    if not change:
        return ""
    return _changed_line(build, stage, change)


def _changed_line(build: Path, stage: str, change: str) -> str:
    name, owner = change.split()[0], "ingest"
    if "/" in name:  # a decision file: its stage writes it again
        owner = next((s for s, path in OWN_FILES.items() if path == name), "dedupe")
        remedy = f"restore it, or run `{rerun_command(build, owner)}` again"
    elif change.endswith("was added"):
        name, change = f"{cat.CATALOG_DIRNAME}/{name}", f"{cat.CATALOG_DIRNAME}/{change}"
        remedy = f"remove {name} (no finished ingest wrote it)"
    else:
        name, change = f"{cat.CATALOG_DIRNAME}/{name}", f"{cat.CATALOG_DIRNAME}/{change}"
        remedy = (
            f"restore it, or delete {name} and run `{rerun_command(build, 'ingest')}` "
            "(it redoes the missing part)"
        )
    stages = STAGES[STAGES.index(owner) + 1 :]
    return (
        f"the catalog of {build} changed after `inf590k {stage}` wrote it ({change}): "
        f"{remedy}, then {', '.join(f'`inf590k {s}`' for s in stages)}"
    )


def adopt_parts(build: Path) -> None:
    """After `catalog.write_catalog` (a tool that rewrites the rows, statuses included, and
    drops the decision files): ingest's record names the parts as they are now, and dedupe's
    no file of its own, as in the earlier layout where dedupe rewrote the parts; the stage
    that wrote the catalog last still checks all of it. Digests are unchanged."""
    for stage in ("ingest", "dedupe"):
        record = read_record(build, stage)
        if record is not None:
            kept = {n: d for n, d in record.catalog.items() if not _owns(stage, n)}
            if stage == "ingest":
                kept.update(_owned("ingest", catalog_contents(build)))
            _rewrite_catalog(build, record, kept)


cat.AFTER_WRITE_CATALOG.append(adopt_parts)


def _rewrite_catalog(build: Path, record: StageRecord, catalog: dict[str, str]) -> None:
    adopted = dataclasses.replace(record, catalog=catalog)
    body = {**dataclasses.asdict(adopted), "digest": adopted.digest}
    write_text_atomic(record_path(build, record.stage), json.dumps(body, indent=1), fsync=True)


def _adopt_earlier_layout(build: Path) -> None:
    """A build folder of the earlier layout, where dedupe and bin rewrote the parts: once its
    stages write their own files, ingest's record names the parts as they are (else its check
    would take dedupe's old rewrite for an edit)."""
    record = read_record(build, "ingest")
    if record is not None and record.catalog:
        others = {n: d for n, d in record.catalog.items() if not _owns("ingest", n)}
        _rewrite_catalog(build, record, {**others, **_owned("ingest", catalog_contents(build))})


def edited_parts(build: Path) -> str:
    """Before ingest runs again (it keeps the parts it finds): a part that is not as the last
    finished ingest left it, in one line ('' when none). A part removed is not one (ingest
    redoes it); after a killed ingest (its marker left) the parts are its own, unchecked."""
    record = read_record(build, "ingest")
    if record is None or not record.catalog or running_path(build, "ingest").exists():
        return ""
    if any(_rewrote_parts(build, s) for s in ("dedupe", "bin")):
        return ""
    now = _owned("ingest", catalog_contents(build))
    recorded = {n: d for n, d in _owned("ingest", record.catalog).items() if n in now}
    change = _catalog_change(recorded, now)
    return _changed_line(build, "ingest", change) if change else ""


def require(build: Path, stage: str) -> None:
    """Refuse (LineageError, one line) unless every stage before `stage` is finished and fresh."""
    chain = STAGES[: STAGES.index(stage)]
    for before in chain:
        reason = problem(build, before)
        if reason:
            missing = (
                not running_path(build, before).exists() and read_record(build, before) is None
            )
            raise (StageMissing if missing else LineageError)(reason)


def is_fresh(build: Path, stage: str, options: dict) -> bool:
    """Whether `stage` finished with these options on the current upstream (nothing to redo)."""
    chain = STAGES[: STAGES.index(stage) + 1]
    if any(problem(build, s) for s in chain):
        return False
    record = read_record(build, stage)
    return record is not None and record.options == plain(options)


def stale_stages(build: Path) -> list[str]:
    """Stages that have run on this build folder but are unfinished or stale now (a stage
    after a stale one is stale too)."""
    stale: list[str] = []
    for stage in STAGES:
        ran = record_path(build, stage).exists() or running_path(build, stage).exists()
        if ran and (stale or problem(build, stage)):
            stale.append(stage)
    return stale


# ----------------------------------------------------------------------------- the lock










def check_build_path(build: Path) -> None:
    build = Path(build)
    if build.exists() and not build.is_dir():
        raise LineageError(f"--build {build} is a file, not a folder: name a folder for the build")


@contextmanager
def locked(build: Path, stage: str) -> Iterator[None]:
    """Create (if needed) and lock the build folder; if the block fails, remove what it created
    and left empty (the stage folders, and the build folder itself)."""
    build = Path(build)
    check_build_path(build)
    created_build = not build.exists()
    existed = {name for name in STAGE_DIRNAMES if (build / name).exists()}
    build.mkdir(parents=True, exist_ok=True)
    try:
        with build_lock(build, stage):
            yield
    except BaseException:
        _remove_empty(build, existed, created_build)
        raise


def _remove_empty(build: Path, existed: set[str], created_build: bool) -> None:
    for name in STAGE_DIRNAMES:
        folder = build / name
        if name not in existed and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if created_build and not held_here(build):
        leftovers = [p for p in build.iterdir() if p.name != LOCK_FILENAME]
        if not leftovers:
            (build / LOCK_FILENAME).unlink(missing_ok=True)
            build.rmdir()


def stage(
    name: str,
    # options that do not change a byte of the output (the executor neither)
    ignore: tuple[str, ...] = ("build", "execution"),
    validate: Callable[[Any], None] | None = None,
    mark: bool = False,
) -> Callable:
    """Decorator for a stage function `func(config) -> summary`: check the build path (and
    `validate(config)`), lock the folder, refuse a missing/unfinished/stale upstream, run, then
    record. `mark`: the stage counts as unfinished from its start (else from its own
    `mark_running` call, made just before it first changes a file). A summary with `changed = True` (ingest that rewrote catalog parts) gets a new digest
    even when its options and counts are the same, so the later stages become stale."""

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def run(config: Any, *args: Any, **kwargs: Any) -> Any:
            build = Path(config.build)
            check_build_path(build)
            if validate is not None:
                validate(config)
            with locked(build, name):
                require(build, name)
                if name == "ingest" and (edited := edited_parts(build)):
                    raise LineageError(edited)
                if mark:
                    mark_running(build, name)
                summary = func(config, *args, **kwargs)
                options = getattr(summary, "lineage_options", None)
                if options is None:
                    options = config_options(config, ignore)
                finish(build, name, options, summary, getattr(summary, "changed", False))
            return summary

        run.lineage_ignore = ignore  # type: ignore[attr-defined]
        return run

    return decorate


def options_for(stage_function: Callable, config: Any) -> dict:
    """The options a `@stage` function records for `config` (to compare with a record)."""
    return config_options(config, stage_function.lineage_ignore)


class Recorded:
    """A stage that was up to date and not re-run: its recorded options, counts and summary."""

    def __init__(self, record: StageRecord) -> None:
        self.record = record
        self.__dict__.update({**record.options, **record.counts})

    def __str__(self) -> str:
        return f"{self.record.summary.splitlines()[-1]} [up to date: not re-run]"
