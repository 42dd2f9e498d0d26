"""`inf590k build`: ingest -> dedupe -> bin -> shard in one call, each stage resumable."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from inf590k.build import lineage
from inf590k.build.bins import BinConfig, BinSummary, bin_catalog
from inf590k.build.dedupe.config import DedupeConfig
from inf590k.build.dedupe.stage import DedupeSummary, dedupe
from inf590k.build.ingest import IngestConfig, IngestSummary, ingest
from inf590k.build.shard.stage import ShardConfig, ShardSummary, shard
from inf590k.execution.ray_cluster import shared_session
from inf590k.execution.units import ExecutionOptions
from inf590k.fsutil import available_cores, plural


@dataclass(frozen=True)
class BuildConfig:
    """The option groups of the four stages; `build` is taken from `ingest.build`."""

    ingest: IngestConfig
    out: Path
    dedupe: DedupeConfig | None = None  # None: defaults
    bins: BinConfig | None = None
    shard: ShardConfig | None = None
    execution: ExecutionOptions | None = None  # every stage's; None: the ingest config's


@dataclass
class BuildSummary:
    ingest: IngestSummary
    dedupe: DedupeSummary | lineage.Recorded  # Recorded: up to date, not re-run
    bins: BinSummary | lineage.Recorded
    shard: ShardSummary | lineage.Recorded
    found: int = 0  # catalog rows of every source in the build folder
    earlier_sources: tuple[str, ...] = ()  # in the build folder from earlier runs, not named now

    def __str__(self) -> str:
        line = (
            f"build: {self.found} files -> {self.dedupe.kept} kept "
            f"({plural(self.dedupe.candidates - self.dedupe.kept, 'duplicate')}) -> "
            f"{plural(self.shard.samples, 'sample')} in {plural(len(self.bins.counts), 'bin')}, "
            f"{plural(self.shard.shards, 'shard')} -> {self.shard.out}"
        )
        if self.earlier_sources:
            line += f" (includes sources of earlier runs: {', '.join(self.earlier_sources)})"
        if self.up_to_date:
            line += " [up to date: nothing changed, nothing re-run]"
        warnings = self.dedupe.warnings if isinstance(self.dedupe, DedupeSummary) else []
        return "\n".join([line, *warnings])


    @property
    def up_to_date(self) -> bool:
        """Nothing to do: ingest found every source as recorded and no later stage was stale."""
        return not self.ingest.changed and not self.ingest.decoded and not self.rerun

    @property
    def rerun(self) -> tuple[str, ...]:
        """The stages after ingest that were stale and ran again."""
        stages = {"dedupe": self.dedupe, "bin": self.bins, "shard": self.shard}
        return tuple(s for s, done in stages.items() if not isinstance(done, lineage.Recorded))


def run_stale(stage_function: Callable, name: str, config: object) -> object:
    """Run a stage unless its record says it already ran on the same input with these options."""
    build = Path(config.build)
    out = getattr(config, "out", None)
    written = out is None or Path(out).exists()
    if written and lineage.is_fresh(build, name, lineage.options_for(stage_function, config)):
        return lineage.Recorded(lineage.read_record(build, name))
    return stage_function(config)


def run_build(config: BuildConfig) -> BuildSummary:
    """Run the four stages on one build folder, under one lock; ingest always (it resumes and
    keeps its record when nothing changed), the later stages only when stale."""
    build = Path(config.ingest.build)
    execution = config.execution or config.ingest.execution
    shard_config = replace(
        config.shard or ShardConfig(build=build, out=config.out),
        build=build,
        out=config.out,
        execution=execution,
    )
    workers = execution.workers or available_cores()
    session = shared_session(execution.executor, workers, execution.ray_address)
    with lineage.locked(build, "build"), session:  # one Ray for every stage, not one each
        ingested = ingest(replace(config.ingest, execution=execution))
        progress = execution.progress
        dedupe_config = replace(config.dedupe or DedupeConfig(build=build), build=build, progress=progress)
        deduped = run_stale(dedupe, "dedupe", dedupe_config)
        bin_config = replace(config.bins or BinConfig(build=build), build=build, progress=progress)
        binned = run_stale(bin_catalog, "bin", bin_config)
        sharded = run_stale(shard, "shard", shard_config)
    return BuildSummary(  # from ingest's record: the catalog is not read again for a count
        ingest=ingested, dedupe=deduped, bins=binned, shard=sharded,
        found=sum(ingested.lineage_counts.values()),
        earlier_sources=ingested.earlier_sources,
    )
