"""Builders the tests share: what `inf590k shard` and `inf590k build` do on the command line
(the build stage, then the dataset side's card), as library calls."""

from __future__ import annotations

from inf590k.build.pipeline import BuildConfig, BuildSummary, run_build
from inf590k.build.shard import ShardConfig, ShardSummary, shard
from inf590k.dataset.card import write_card


def shard_dataset(config: ShardConfig) -> ShardSummary:
    """`inf590k shard`: the shards and index files, then the card."""
    summary = shard(config)
    write_card(config.out)
    return summary


def build_dataset(config: BuildConfig) -> BuildSummary:
    """`inf590k build`: the four stages, then the card."""
    summary = run_build(config)
    write_card(config.out)
    return summary
