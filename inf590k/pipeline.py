"""`inf590k build`: ingest -> dedupe -> bin -> shard in one call, each stage resumable."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from inf590k import catalog as cat
from inf590k.bins import BinConfig, BinSummary, bin_catalog
from inf590k.dedupe import DedupeConfig, DedupeSummary, dedupe
from inf590k.ingest import IngestConfig, IngestSummary, ingest
from inf590k.shard import ShardConfig, ShardSummary, shard


@dataclass(frozen=True)
class BuildConfig:
    """The option groups of the four stages; `build` is taken from `ingest.build`."""

    ingest: IngestConfig
    out: Path
    dedupe: DedupeConfig | None = None  # None: defaults
    bins: BinConfig | None = None
    shard: ShardConfig | None = None


@dataclass
class BuildSummary:
    ingest: IngestSummary
    dedupe: DedupeSummary
    bins: BinSummary
    shard: ShardSummary
    found: int = 0  # catalog rows of every source in the build folder
    earlier_sources: tuple[str, ...] = ()  # in the build folder from earlier runs, not named now

    def __str__(self) -> str:
        line = (
            f"build: {self.found} files -> {self.dedupe.kept} kept ({self.dedupe.candidates - self.dedupe.kept} "
            f"duplicates) -> {self.shard.samples} samples in {len(self.bins.counts)} bins, "
            f"{self.shard.shards} shards -> {self.shard.out}"
        )
        if self.earlier_sources:
            line += f" (includes sources of earlier runs: {', '.join(self.earlier_sources)})"
        return line


def run_build(config: BuildConfig) -> BuildSummary:
    """Run the four stages on one build folder; every stage reads the previous one's files."""
    build = Path(config.ingest.build)
    ingested = ingest(config.ingest)
    deduped = dedupe(replace(config.dedupe or DedupeConfig(build=build), build=build))
    binned = bin_catalog(replace(config.bins or BinConfig(build=build), build=build))
    shard_config = config.shard or ShardConfig(build=build, out=config.out)
    sharded = shard(replace(shard_config, build=build, out=config.out))
    counts = cat.status_counts(cat.read_catalog(build))
    named = {s.source for s in ingested.sources}
    return BuildSummary(
        ingest=ingested, dedupe=deduped, bins=binned, shard=sharded,
        found=sum(c["found"] for c in counts.values()),
        earlier_sources=tuple(sorted(set(counts) - named)),
    )
