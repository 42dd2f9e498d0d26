"""Sampling weights over sources and bins (--mix, --mix-bin), the realised shares counted,
and the equal sample windows of an epoch without --resampled."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from pretrain.config import DataConfig
from pretrain.data import (
    ShardStream,
    WorkerPosition,
    epoch_length,
    loader_for,
    parse_weights,
    plan_mixture,
    read_info,
    realised,
    sample_window,
    shares,
)
from tests.shardkit import make_dataset, make_mixed_dataset

FAST = dict(shuffle_buffer=16, shuffle_initial=4, retries=1, retry_wait=0.01, timeout=5.0)
# big: 60 samples of a, 20 of b, 20 of c; bins 64x64 (80 samples) and 32x32 (20)
LAYOUT = [
    ("64x64", {"a": 30, "b": 10}),
    ("64x64", {"a": 30, "c": 10}),
    ("32x32", {"b": 10, "c": 10}),
]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return make_mixed_dataset(tmp_path_factory.mktemp("mixed"), LAYOUT, height=8, width=8)


def drawn_shares(mixed, batches: int, workers: int = 0, **options):
    config = DataConfig(**{**FAST, "batch_size": 20, "workers": workers, **options})
    info = read_info(str(mixed.info_path))
    loader, tracker = loader_for(
        config, 8, seed=1, rank=0, world_size=1, pin_memory=False,
        urls=[str(p) for p in mixed.shards], info=info,
    )  # fmt: skip
    for _, position in itertools.islice(loader, batches):
        tracker.update(position)
    return realised(tracker.drawn), tracker


# ---------------------------------------------------------------- weights as given


def test_weights_parse_in_either_form():
    assert parse_weights(["a=1", "b=2,c=0.5"], "--mix") == {"a": 1.0, "b": 2.0, "c": 0.5}
    assert parse_weights([], "--mix") == {}


@pytest.mark.parametrize(
    "items, message",
    [
        (["a"], "expected NAME=WEIGHT"),
        (["=2"], "expected NAME=WEIGHT"),
        (["a=x"], "expected NAME=WEIGHT"),
        (["a=-1"], "finite number >= 0"),
        (["a=inf"], "finite number >= 0"),
        (["a=0", "b=0"], "add up to 0"),
        (["a=1", "a=2"], "names 'a' twice"),
        (["a=1e308", "b=1e308"], "more than a float holds"),
    ],
)
def test_bad_weights_are_one_line(items, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_weights(items, "--mix")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "one, other", [("a=0.3,b=0.6", "a=1,b=2"), ("a=0.1,b=0.2,c=0.6", "a=1,b=2,c=6"), ("x=5", "x=0.7")]
)
def test_one_mixture_at_two_scales_has_equal_shares(one, other):
    """What a resume compares: the same shares whatever the scale (0.3/0.9 != 1/3 in floats)."""
    assert shares(parse_weights([one], "--mix")) == shares(parse_weights([other], "--mix"))
    assert shares(parse_weights(["a=1,b=2"], "--mix")) != shares(parse_weights(["a=1,b=3"], "--mix"))


def test_unknown_names_are_refused_naming_the_known_ones(mixed):
    info = read_info(str(mixed.info_path))
    keys = [f"{p.parent.name}/{p.name}" for p in mixed.shards]
    lengths = dict(zip(keys, info.shard_lengths, strict=True))
    with pytest.raises(ValueError, match=r"--mix flir: no such source .*a, b, c"):
        plan_mixture(["flir=1"], [], keys, lengths, info.sources)
    with pytest.raises(ValueError, match=r"--mix-bin 640x512: no such bin .*32x32, 64x64"):
        plan_mixture([], ["640x512=1"], keys, lengths, info.sources)
    with pytest.raises(ValueError, match="needs the sources of the data"):
        plan_mixture(["a=1"], [], keys, lengths, ())


def test_mix_without_resampling_is_refused():
    with pytest.raises(ValueError, match="needs --resampled"):
        DataConfig(mix=("a=1",), resampled=False)


# ---------------------------------------------------------------- realised shares


def test_default_draws_in_the_stored_proportions(mixed):
    shares, _ = drawn_shares(mixed, 60)
    assert shares["sources"]["a"] == pytest.approx(0.6, abs=0.06)
    assert shares["bins"]["64x64"] == pytest.approx(0.8, abs=0.06)


def test_source_weights_are_followed(mixed):
    shares, tracker = drawn_shares(mixed, 60, mix=("a=1", "b=1", "c=2"))
    assert sum(tracker.drawn["sources"].values()) == 60 * 20
    assert shares["sources"]["a"] == pytest.approx(0.25, abs=0.05)
    assert shares["sources"]["b"] == pytest.approx(0.25, abs=0.05)
    assert shares["sources"]["c"] == pytest.approx(0.50, abs=0.05)


def test_sources_are_counted_in_the_samples_where_the_index_lists_none(tmp_path, caplog):
    """make_dataset's _info.json lists no sources: --mix counts them from the samples' .json
    (synthetic0, 1 and 2 in 4 of the 12 shards each)."""
    data = make_dataset(tmp_path / "ds", num_shards=12, per_shard=4, height=8, width=8)
    config = DataConfig(
        **{**FAST, "batch_size": 20, "workers": 0},
        mix=("synthetic0=1", "synthetic1=1", "synthetic2=2"),
    )
    info = read_info(str(data.info_path))
    with caplog.at_level("WARNING", logger="pretrain.data"):
        loader, tracker = loader_for(
            config, 8, seed=2, rank=0, world_size=1, pin_memory=False,
            urls=[str(p) for p in data.shards], info=info,
        )  # fmt: skip
    assert "lists no sources: counting them" in caplog.text
    for _, position in itertools.islice(loader, 100):
        tracker.update(position)
    got = realised(tracker.drawn)["sources"]  # stored: a third each
    # whole shards of one source: draws of 4 correlated samples, so a wider tolerance
    assert got["synthetic0"] == pytest.approx(0.25, abs=0.08)
    assert got["synthetic2"] == pytest.approx(0.50, abs=0.08)
    with pytest.raises(ValueError, match="--mix flir: no such source .*synthetic0"):
        loader_for(
            DataConfig(mix=("flir=1",)), 8, seed=2, rank=0, world_size=1, pin_memory=False,
            urls=[str(p) for p in data.shards], info=info,
        )  # fmt: skip


def test_a_source_left_out_is_never_drawn(mixed):
    shares, _ = drawn_shares(mixed, 30, mix=("b=1", "c=1"))
    assert set(shares["sources"]) == {"b", "c"}
    assert shares["sources"]["b"] == pytest.approx(0.5, abs=0.07)


def test_bin_weights_are_followed_across_workers(mixed):
    shares, _ = drawn_shares(mixed, 60, workers=2, mix_bin=("64x64=1", "32x32=1"))
    # bins are drawn as whole shards (3 here): draws of 20 correlated samples
    assert shares["bins"]["32x32"] == pytest.approx(0.5, abs=0.08)


def test_shards_without_the_weighted_sources_stop_the_run(mixed):
    """--mix b=1 over a shard holding only a and c: one line instead of reading forever."""
    config = DataConfig(**{**FAST, "batch_size": 4, "workers": 0, "mix": ("b=1",)})
    info = read_info(str(mixed.info_path))
    loader, _ = loader_for(
        config, 8, seed=1, rank=0, world_size=1, pin_memory=False,
        urls=[str(mixed.shards[1])], info=info.select([str(mixed.shards[1])]),
    )  # fmt: skip
    with pytest.raises(ValueError, match="without a sample of a source weighted above 0"):
        next(iter(loader))


def test_drawn_counts_survive_a_resume(mixed):
    config = DataConfig(**{**FAST, "batch_size": 10, "workers": 0, "mix": ("a=1", "c=1")})
    info = read_info(str(mixed.info_path))
    urls = [str(p) for p in mixed.shards]
    loader, tracker = loader_for(
        config, 8, seed=1, rank=0, world_size=1, pin_memory=False, urls=urls, info=info
    )
    for _, position in itertools.islice(loader, 3):
        tracker.update(position)
    state = tracker.state()
    assert sum(state["drawn"]["sources"].values()) == 30
    loader, resumed = loader_for(
        config, 8, seed=1, rank=0, world_size=1, pin_memory=False, urls=urls, info=info,
        resume_state=state,
    )  # fmt: skip
    for _, position in itertools.islice(loader, 2):
        resumed.update(position)
    assert sum(resumed.drawn["sources"].values()) == 50
    assert set(resumed.drawn["sources"]) <= {"a", "c"}


# ---------------------------------------------------------------- an epoch in equal windows


@pytest.mark.parametrize("lengths", [[50, 3, 1, 20], [1], [7, 7], [2, 1]])
@pytest.mark.parametrize("shares", [1, 2, 3, 4, 8])
def test_windows_are_equal_and_cover_every_sample(lengths, shares):
    order = [f"b/{i}.tar" for i in range(len(lengths))]
    total, per_share = sum(lengths), -(-sum(lengths) // shares)
    read: Counter[tuple[str, int]] = Counter()
    length = dict(zip(order, lengths, strict=True))
    for share in range(shares):
        pieces = [
            (url, first, length[url] if stop is None else stop)
            for url, first, stop in sample_window(order, lengths, share, shares)
        ]
        assert sum(stop - first for _, first, stop in pieces) == per_share
        for url, first, stop in pieces:
            read.update((url, i) for i in range(first, stop))
    every = {(url, i) for url, n in zip(order, lengths, strict=True) for i in range(n)}
    assert set(read) == every  # each sample in some window
    # the remainder is padded by repeats: exactly shares x window - total samples read twice
    assert sum(read.values()) - total == shares * per_share - total
    assert max(read.values()) <= 2 or per_share * shares > 2 * total


def test_an_epoch_without_resampling_reads_each_sample_once(tmp_path):
    """Four unequal shards over 2 ranks x 2 workers: each share reads the same number of
    samples, and together every sample (and the padding's repeats) once."""
    layout = [("b", {"a": n}) for n in (50, 3, 1, 20)]
    data = make_mixed_dataset(tmp_path / "ds", layout, height=4, width=4)
    info = read_info(str(data.info_path))
    config = DataConfig(**{**FAST, "batch_size": 4, "workers": 2, "resampled": False})
    keys: Counter[str] = Counter()
    per_share = []
    for rank in range(2):
        stream = ShardStream(
            urls=list(info.filenames), config=config, image_size=4, seed=5, rank=rank,
            world_size=2, num_workers=2,
            shard_lengths={f"b/{u.rsplit('/', 1)[1]}": n
                           for u, n in zip(info.filenames, info.shard_lengths, strict=True)},
        )  # fmt: skip
        for worker in range(2):
            got = [s["__key__"] for _, s in stream._pass(worker, WorkerPosition())]
            per_share.append(len(got))
            keys.update(got)
    assert per_share == [19] * 4  # ceil(74 / 4)
    assert set(keys) == {uid for uids in data.uids for uid in uids}
    assert sum(keys.values()) == 76 and sum(1 for n in keys.values() if n == 2) == 2
    # the schedule counts the epoch the loader reads: 4 windows of 19, padding included
    assert epoch_length(config, info, world_size=2) == 76
    assert epoch_length(DataConfig(workers=2), info, world_size=2) == 74  # resampled
    assert epoch_length(DataConfig(samples_per_epoch=10, resampled=False), info, 2) == 10


def test_a_shard_read_in_part_is_still_checked_whole(tmp_path, caplog):
    """The 50-sample shard split between two windows: each reads it to the end, so its
    sha256 (here a wrong one) and its length are checked as for a whole read."""
    data = make_mixed_dataset(
        tmp_path / "ds", [("b", {"a": n}) for n in (50, 20)], height=4, width=4
    )
    config = DataConfig(**{**FAST, "batch_size": 4, "workers": 1, "resampled": False})
    lengths = {"b/b-000000.tar": 50, "b/b-000001.tar": 20}
    stream = ShardStream(
        urls=[str(p) for p in data.shards], config=config, image_size=4, seed=5, rank=0,
        world_size=2, num_workers=1, shard_lengths=lengths,
        shard_sums={"b/b-000000.tar": "0" * 64},
    )  # fmt: skip
    windows = stream.pass_windows(0, 0)
    assert any(stop is not None for _, _, stop in windows)  # a shard read in part
    stats = WorkerPosition()
    with caplog.at_level("WARNING", logger="pretrain.data"):
        got = [s["__key__"] for _, s in stream._pass(0, stats)]
    assert len(got) == 35  # its window, however the shards fall
    assert stats.shard_errors == 1 and "does not match its sha256" in caplog.text
