"""How records name the data, and the licence the weights inherit from the sources."""

from __future__ import annotations

import pytest

from pretrain.provenance import (
    describe_shards,
    hub_repo_id,
    is_loopback,
    licence_kind,
    safe_shard_specs,
    weights_licence,
)


def source(name: str, licence: str | None) -> dict:
    return {"id": name.lower(), "name": name, "license": licence, "modality": "lwir", "samples": 3}


@pytest.mark.parametrize(
    ("licence", "kind"),
    [
        ("CC BY-NC-SA", "non-commercial"),
        ("CC BY-NC 4.0", "non-commercial"),
        ("non-commercial research use", "non-commercial"),
        ("research use with credit to TNO (see the figshare page)", "non-commercial"),
        ("CC BY 4.0", "permissive"),
        ("CDLA-Permissive", "permissive"),
        ("MIT", "permissive"),
        ("unknown (no license stated; check before redistributing)", "unknown"),
        ("none stated (no license file)", "unknown"),
        ("FLIR ADAS dataset terms (read them before redistributing)", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_source_licences_are_sorted_by_what_they_allow(licence, kind):
    assert licence_kind(licence) == kind


def test_non_commercial_sources_make_non_commercial_weights():
    licence = weights_licence([source("LLVIP", "CC BY 4.0"), source("SIRST", "CC BY-NC-SA")])
    assert (licence.id, licence.name, licence.short) == (
        "other",
        "non-commercial",
        "non-commercial",
    )
    assert (
        licence.summary.startswith("Non-commercial use only")
        and "SIRST: CC BY-NC-SA" in licence.summary
    )
    mixed = weights_licence([source("SIRST", "CC BY-NC-SA"), source("X", "unknown")])
    assert mixed.name == "non-commercial" and "not known (X: unknown)" in mixed.summary


def test_unknown_or_unrecorded_licences_are_never_claimed():
    for sources in (None, [], [source("LLVIP", "CC BY 4.0"), source("KAIST", None)]):
        licence = weights_licence(sources)
        assert licence.id == "unknown" and licence.summary.startswith("Unknown")
        assert "apache" not in licence.summary.lower()
    permissive = weights_licence([source("LLVIP", "CC BY 4.0"), source("M3FD", "MIT")])
    assert permissive.id == "other" and "permissive" in permissive.summary


def test_records_name_hub_repos_and_never_a_loopback_url():
    hf = "https://huggingface.co/datasets/lab/inf590k/resolve/main/data/640x512/shard-{000000..000009}.tar"
    assert hub_repo_id(hf) == "lab/inf590k"
    assert hub_repo_id("hf://datasets/lab/inf590k/data/_info.json") == "lab/inf590k"
    assert hub_repo_id("https://example.org/datasets/a/b/x.tar") is None
    assert describe_shards([hf, hf.replace("640x512", "320x256")]) == "lab/inf590k"
    assert describe_shards(["data/640x512/shard-{000000..000003}.tar"]) == (
        "data/640x512/shard-{000000..000003}.tar"
    )
    for url in (
        "http://127.0.0.1:8123/_info.json",
        "http://localhost:80/x.tar",
    ):
        assert is_loopback(url)
        assert "127.0.0.1" not in describe_shards([url]) and "localhost:" not in describe_shards(
            [url]
        )
        assert safe_shard_specs([url]) == [describe_shards([url])]
    assert is_loopback("http://[::1]:9/a.tar") and not is_loopback("http://[::1/a.tar")
    assert not is_loopback("https://example.org/x.tar") and not is_loopback("/data/x.tar")
    assert describe_shards(["https://host/x.tar?token=secret"]) == "https://host/x.tar"


