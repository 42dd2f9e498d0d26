"""Sampling weights over sources (`--mix SOURCE=W`) and resolution bins (`--mix-bin BIN=W`),
and the counts of what was drawn.

    mixture = plan_mixture(config, urls, info)
    mixture.keep["flir"]     # chance a read sample of source flir is kept (largest: 1)
    mixture.draw["640x512"]  # relative chance a shard of bin 640x512 is drawn

A bin is a shard's folder (`data/<bin>/<shard>.tar`), known before a shard is opened, so bins
are weighted where shards are drawn: bin b's shards are drawn with weight w_b / n_b (n_b: its
samples), so every sample of b is equally likely and b gets the share w_b / sum(w). Shards mix
sources, so sources are weighted per sample: a sample of source s (its `.cls` is the class
id of s in _info.json's sources, as its `.json` says) is kept
with a chance proportional to w_s / n_s (n_s: the source's samples in _info.json, or counted
in the samples' .json where it lists none). With both
flags each applies as a factor: the shares are exact when sources and bins are independent,
approximate otherwise; the realised shares are counted either way. Names not given get weight
0 (not drawn). Without flags nothing changes: every sample is equally likely.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

UNLISTED = "(unlisted)"  # the source label of a sample whose source _info.json does not list


def parse_weights(items: Sequence[str], flag: str) -> dict[str, float]:
    """`("a=1", "b=2,c=0.5")` -> {"a": 1.0, "b": 2.0, "c": 0.5}; one ValueError line for a
    malformed item, a repeated name, a negative or non-finite weight, or weights summing to 0."""
    weights: dict[str, float] = {}
    for item in (part.strip() for value in items for part in str(value).split(",")):
        if not item:
            continue
        name, sep, text = item.partition("=")
        name = name.strip()
        try:
            weight = float(text) if sep and name else math.nan
        except ValueError:
            weight = math.nan
        if math.isnan(weight):
            raise ValueError(f"{flag} {item!r}: expected NAME=WEIGHT, e.g. {flag} flir=2")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{flag} {item!r}: a weight is a finite number >= 0")
        if name in weights:
            raise ValueError(f"{flag} names {name!r} twice")
        weights[name] = weight
    if weights and sum(weights.values()) <= 0:
        raise ValueError(f"{flag}: the weights add up to 0, so nothing could be drawn")
    if not math.isfinite(sum(weights.values())):
        raise ValueError(f"{flag}: the weights add up to more than a float holds; use smaller ones")
    return weights


SHARE_DIGITS = 12  # shares rounded so that one mixture at two scales compares equal


def shares(weights: Mapping[str, float]) -> dict[str, float]:
    """Weights as shares that add up to 1 (the same mixture whatever their scale: 0.3/0.9
    and 1/3 differ in the last bit, so shares are rounded to SHARE_DIGITS decimals)."""
    total = sum(weights.values())
    return {name: round(weight / total, SHARE_DIGITS) for name, weight in sorted(weights.items())}


def bin_of(shard_key: str) -> str:
    """The bin of a shard named `<bin>/<shard>.tar` (its folder; "" for a lone tar)."""
    folder, _, _ = shard_key.rpartition("/")
    return folder


@dataclass(frozen=True)
class Mixture:
    """What the stream needs to draw by weight, and the labels it counts draws under."""

    sources: tuple[str, ...]  # source ids counted (from _info.json), then UNLISTED
    bins: tuple[str, ...]  # the bins of the shards read, sorted
    classes: dict[int, str] = field(default_factory=dict)  # a sample's .cls -> its source id
    source_weights: dict[str, float] = field(default_factory=dict)  # shares; {}: natural
    bin_weights: dict[str, float] = field(default_factory=dict)
    keep: dict[str, float] = field(default_factory=dict)  # source -> keep chance; {}: keep all
    draw: dict[str, float] = field(default_factory=dict)  # bin -> shard draw factor; {}: 1

    def keep_chance(self, source: str) -> float:
        return self.keep.get(source, 0.0) if self.keep else 1.0

    def draw_factor(self, bin_name: str) -> float:
        return self.draw.get(bin_name, 0.0) if self.draw else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"sources": dict(self.source_weights), "bins": dict(self.bin_weights)}

    def describe(self) -> str:
        """One line for the run's opening log: the shares asked for."""
        parts = [
            f"{flag} " + ", ".join(f"{n} {100 * s:.1f}%" for n, s in weights.items())
            for flag, weights in (("--mix", self.source_weights), ("--mix-bin", self.bin_weights))
            if weights
        ]
        return "; ".join(parts) or "natural proportions (every sample equally likely)"


def _check_names(given: Mapping[str, float], known: Sequence[str], flag: str, what: str) -> None:
    unknown = sorted(set(given) - set(known))
    if unknown:
        listed = ", ".join(known[:20]) + (" ..." if len(known) > 20 else "")
        raise ValueError(f"{flag} {unknown[0]}: no such {what} in the data (its {what}s: {listed})")


def plan_mixture(
    mix: Sequence[str],
    mix_bin: Sequence[str],
    shard_keys: Sequence[str],
    shard_lengths: Mapping[str, int],
    sources: Sequence[Mapping[str, Any]],
) -> Mixture:
    """The mixture of `--mix` / `--mix-bin` over the shards read (`<bin>/<shard>.tar` keys,
    their lengths where _info.json gives them) and the sources _info.json lists."""
    source_ids = tuple(str(s["id"]) for s in sources)
    bins = tuple(sorted({bin_of(key) for key in shard_keys}))
    source_weights = parse_weights(mix, "--mix")
    bin_weights = parse_weights(mix_bin, "--mix-bin")
    keep: dict[str, float] = {}
    if source_weights:
        if not sources:
            raise ValueError(
                "--mix needs the sources of the data: its _info.json lists none and its "
                "samples name none"
            )
        _check_names(source_weights, source_ids, "--mix", "source")
        samples = {str(s["id"]): int(s["samples"]) for s in sources}
        rate = {n: w / samples[n] for n, w in source_weights.items() if w > 0 and samples[n]}
        if not rate:
            raise ValueError("--mix: every source with a weight above 0 has no samples")
        top = max(rate.values())
        keep = {name: r / top for name, r in rate.items()}
    draw: dict[str, float] = {}
    if bin_weights:
        _check_names(bin_weights, bins, "--mix-bin", "bin")
        if not all(key in shard_lengths for key in shard_keys):
            raise ValueError(
                "--mix-bin needs every shard's length (_info.json shard_lengths) to weight bins"
            )
        per_bin: dict[str, int] = {}
        for key in shard_keys:
            per_bin[bin_of(key)] = per_bin.get(bin_of(key), 0) + shard_lengths[key]
        draw = {n: w / per_bin[n] for n, w in bin_weights.items() if w > 0}
    return Mixture(
        sources=(*source_ids, UNLISTED),
        bins=bins,
        classes={int(s["class_id"]): str(s["id"]) for s in sources},
        source_weights=shares(source_weights) if source_weights else {},
        bin_weights=shares(bin_weights) if bin_weights else {},
        keep=keep,
        draw=draw,
    )


def realised(counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, float]]:
    """Counted draws {"sources": {id: n}, "bins": {bin: n}} as shares of what was drawn."""
    result = {}
    for kind in ("sources", "bins"):
        drawn = {name: n for name, n in counts.get(kind, {}).items() if n}
        total = sum(drawn.values())
        result[kind] = {name: n / total for name, n in sorted(drawn.items())} if total else {}
    return result


def add_counts(
    into: dict[str, dict[str, int]], other: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    """Sum two count tables ({"sources": {...}, "bins": {...}}), e.g. of two ranks."""
    for kind in ("sources", "bins"):
        table = into.setdefault(kind, {})
        for name, n in other.get(kind, {}).items():
            if int(n):  # labels never drawn stay out of the record
                table[name] = table.get(name, 0) + int(n)
    return into


def describe_realised(counts: Mapping[str, Mapping[str, int]]) -> str:
    """`sources a 24.9%, b 75.1%; bins 640x512 100.0%` of counted draws ("" before any)."""
    parts = [
        f"{kind} " + ", ".join(f"{name} {100 * s:.1f}%" for name, s in table.items())
        for kind, table in realised(counts).items()
        if table
    ]
    return "; ".join(parts)
