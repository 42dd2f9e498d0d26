"""What ingest is asked (IngestConfig) and what it says it did, per source and in all
(SourceSummary, IngestSummary: every file found is ok, excluded or rejected).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from inf590k.execution.units import ExecutionOptions
from inf590k.fsutil import plural
from inf590k.inputs.imageio import (
    ImagePolicy,
)


@dataclass(frozen=True)
class IngestConfig:
    sources: tuple[tuple[str, Path], ...]  # (source id, root folder or archive)
    build: Path
    manifests: tuple[Path, ...] = ()  # extra manifest files (--manifest)
    policy: ImagePolicy = field(default_factory=ImagePolicy)
    drop_sources: tuple[str, ...] = ()  # source ids whose rows and chunks are removed first
    execution: ExecutionOptions = field(default_factory=ExecutionOptions)
    # (folder source id, name | license | citation, text): --source-name/-license/-citation,
    # over the description file at the folder's root
    source_facts: tuple[tuple[str, str, str], ...] = ()


@dataclass
class SourceSummary:
    source: str
    root: str = ""
    found: int = 0
    ok: int = 0
    excluded: int = 0
    rejected: int = 0
    matched: int = 0  # distinct files the include globs matched, before the video stride
    expected: int | None = None
    reused_chunks: int = 0
    folder: bool = False  # a `folder:NAME` (or `folder`) source: no layout to compare
    damaged: str = ""  # the reason of the row that stands for an unreadable archive
    catalog: str = ""  # the build's catalog folder

    def __str__(self) -> str:
        line = (
            f"{self.source}: found {self.found} = ok {self.ok} + excluded {self.excluded} "
            f"+ rejected {self.rejected}"
        )
        if self.expected is not None and self.expected != self.matched:
            line += f" (the manifest expects {self.expected} files matching its globs, found {self.matched})"
        if self.reused_chunks:
            line += f" [resumed: {plural(self.reused_chunks, 'chunk')} already done]"
        return line

    def warning(self) -> str:
        """A line when the source yielded no image at all, with the next step for its case."""
        if self.ok:
            return ""
        head = f"warning: source {self.source} kept 0 of {self.found} files in {self.root}: "
        if self.damaged:  # the archive's index (or everything after its start) cannot be read
            return head + self.damaged
        if self.folder:  # `folder:NAME` sources have no manifest that `sources show` knows
            return head + (
                "check that the path holds infrared images, and read why each file was left out "
                f"in the catalog's reason column (pyarrow.parquet.read_table('{self.catalog}'))"
            )
        return head + (
            f"compare its layout with `inf590k sources show {self.source}` (or use --manifest FILE)"
        )


@dataclass
class IngestSummary:
    sources: list[SourceSummary]
    seconds: float
    decoded: int
    earlier_sources: tuple[str, ...] = ()  # in the build folder from earlier runs, not named now
    dropped: tuple[str, ...] = ()
    changed: bool = True  # catalog parts were written or removed (lineage: later stages stale)
    lineage_options: dict = field(default_factory=dict)  # what the catalog was made from
    lineage_counts: dict = field(default_factory=dict)  # {source: rows}, every source in the build

    @property
    def warnings(self) -> list[str]:
        return [w for w in (s.warning() for s in self.sources) if w]

    def __str__(self) -> str:
        lines = [str(s) for s in self.sources]
        if self.dropped:
            lines.append(f"dropped from the build: {', '.join(self.dropped)}")
        if self.earlier_sources:
            lines.append(
                f"also in the build from earlier runs: {', '.join(self.earlier_sources)} "
                "(remove one with --drop-source ID)"
            )
        rate = self.decoded / self.seconds if self.seconds > 0 else 0.0
        total = sum(s.found for s in self.sources)
        lines.append(f"ingest: {plural(total, 'file')} catalogued, {self.decoded} decoded in {self.seconds:.1f} s ({rate:.0f} img/s)")
        lines.extend(self.warnings)
        return "\n".join(lines)
