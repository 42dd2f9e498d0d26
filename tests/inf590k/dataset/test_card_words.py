"""The card's words for the catalogue's reasons: one name per reason a reader knows."""

from __future__ import annotations

from inf590k.build.shard.stage import reason_class
from inf590k.dataset.card import excluded_meaning, excluded_summary
from inf590k.inputs.manifest import STANDARD_EXCLUDES, resolve_manifests


def test_visible_exclusions_are_counted_under_one_name():
    counts = {
        "tno": {"reasons": {"excluded": {"visible band folder": 3, "visible band file": 1}}},
        "folder_a": {"reasons": {"excluded": {"visible image folder": 2, "mask folder": 4}}},
        "llvip": {"reasons": {"excluded": {"visible half": 5, "video stride": 7}}},
    }
    summary = excluded_summary(counts)
    assert summary == "visible half 11, frames skipped by the video stride 7, mask folder 4"
    for name in ("visible image folder", "visible band folder"):
        assert name not in summary


def test_every_manifest_rule_for_a_visible_half_reads_visible_half():
    """Every rule whose pattern is a visible folder or file, shipped or standard, maps to it;
    catalog reasons themselves are unchanged (queries and manifests use them)."""
    rules = [name for name, _ in STANDARD_EXCLUDES]
    rules += [r.rule for m in resolve_manifests().values() for r in m.exclude]
    visible = [rule for rule in rules if rule.lower().startswith("visible")]
    assert "visible image folder" in visible and any("band" in r for r in visible)
    assert {excluded_meaning(reason_class(rule)) for rule in visible} == {"visible half"}
    assert excluded_meaning("mask folder") == "mask folder"
