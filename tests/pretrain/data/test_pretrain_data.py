"""The shard stream: URLs, opening (local, HTTP, errors), decoding, crops, splitting, resume."""

from __future__ import annotations

import http.server
import itertools
import threading

import cv2
import numpy as np
import pytest
import torch

from pretrain.data import (
    DataConfig,
    ShardStream,
    ShardUnreachableError,
    StreamTracker,
    crop_flip,
    decode_ir_png,
    epoch_samples,
    expand_shard_urls,
    loader_for,
    open_url,
    random_resized_crop_box,
    read_info,
    shard_key,
)
from tests.shardkit import closed_port, corrupt_copy, make_dataset, serve_folder, write_shard

FAST = dict(shuffle_buffer=8, shuffle_initial=4, retries=2, retry_wait=0.01, timeout=5.0)


def stream_for(urls, *, rank=0, world=1, workers=1, size=16, **overrides) -> ShardStream:
    config = DataConfig(**{**FAST, "batch_size": 4, "workers": workers, **overrides})
    return ShardStream(
        urls=list(urls),
        config=config,
        image_size=size,
        rank=rank,
        world_size=world,
        num_workers=max(1, workers),
    )


def pass_keys(stream: ShardStream, worker: int = 0, pass_index: int = 0) -> list[str]:
    from pretrain.data import WorkerPosition

    stats = WorkerPosition(pass_index=pass_index)
    return [sample["__key__"] for _, sample in stream._pass(worker, stats)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ds"), num_shards=4, per_shard=6)


# ---------------------------------------------------------------- URLs and _info.json


def test_expand_brace_list_info_and_folder(dataset):
    root = dataset.root
    pattern = f"{root}/640x512/shard-{{000000..000002}}.tar"
    assert expand_shard_urls(pattern) == [str(p) for p in dataset.shards[:3]]
    pair = f"{dataset.shards[0]}::{dataset.shards[3]}"
    assert expand_shard_urls(pair) == [str(dataset.shards[0]), str(dataset.shards[3])]
    assert expand_shard_urls(str(dataset.info_path)) == [str(p) for p in dataset.shards]
    assert expand_shard_urls(str(root)) == [str(p) for p in dataset.shards]
    assert expand_shard_urls([str(dataset.shards[1]), f"file://{dataset.shards[2]}"])[1] == (
        f"file://{dataset.shards[2]}"
    )
    with pytest.raises(ValueError, match="no shard URLs"):
        expand_shard_urls(["", "::"])


def test_epoch_length_from_info_next_to_shards(dataset):
    urls = expand_shard_urls(str(dataset.root))
    assert epoch_samples(DataConfig(), urls) == dataset.num_samples
    assert epoch_samples(DataConfig(samples_per_epoch=7), urls) == 7
    with pytest.raises(ValueError, match="no split 'val'"):
        read_info(str(dataset.info_path), "val")


def test_info_and_shards_over_http(dataset):
    with serve_folder(dataset.root) as base:
        urls = expand_shard_urls(f"{base}/_info.json")
        assert urls == [f"{base}/640x512/shard-{i:06d}.tar" for i in range(4)]
        assert epoch_samples(DataConfig(), urls) == dataset.num_samples
        keys = pass_keys(stream_for(urls, resampled=False, shuffle_buffer=1, shuffle_initial=1))
    # One pass reads every sample once; shards come in a seeded order, samples in tar order.
    assert sorted(keys) == sorted(uid for uids in dataset.uids for uid in uids)
    assert keys[:6] in [list(uids) for uids in dataset.uids]


# ---------------------------------------------------------------- decoding and crops


def test_decode_8_and_16_bit_and_reject_bad_input():
    eight = np.arange(48 * 60, dtype=np.uint16).reshape(48, 60) % 256
    png8 = cv2.imencode(".png", eight.astype(np.uint8))[1].tobytes()
    assert decode_ir_png(png8, 10**6).dtype == np.uint8
    sixteen = (eight * 40 + 7000).astype(np.uint16)
    decoded = decode_ir_png(cv2.imencode(".png", sixteen)[1].tobytes(), 10**6)
    assert decoded.dtype == np.uint16 and np.array_equal(decoded, sixteen)
    colour = cv2.imencode(".png", np.dstack([eight.astype(np.uint8)] * 3))[1].tobytes()
    assert decode_ir_png(colour, 10**6).shape == (48, 60)
    with pytest.raises(ValueError, match="pixel cap"):
        decode_ir_png(png8, 1000)
    with pytest.raises(ValueError, match="not a PNG"):
        decode_ir_png(b"GIF89a" + b"\0" * 40, 10**6)
    with pytest.raises(ValueError, match="could not decode"):
        decode_ir_png(png8[:40] + b"\0" * 20, 10**6)


def test_stream_of_16_bit_shards_gives_spread_8_bit_crops(tmp_path):
    raw = make_dataset(tmp_path / "raw16", num_shards=2, per_shard=4, bit16=True)
    stream = stream_for([str(p) for p in raw.shards], resampled=False, size=(16, 24))
    images, position = next(iter(stream))
    assert images.dtype == torch.uint8 and images.shape == (4, 1, 16, 24)
    assert all(int(img.max()) - int(img.min()) > 50 for img in images)  # stretched, not clipped
    assert position.tolist()[:3] == [0, 0, 4]


def test_crop_box_follows_random_resized_crop_rules():
    rng = np.random.default_rng(0)
    areas = []
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(512, 640, rng, (0.2, 1.0))
        assert 0 <= top and top + h <= 512 and 0 <= left and left + w <= 640
        assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02
        areas.append(h * w / (512 * 640))
    assert min(areas) >= 0.19 and max(areas) <= 1.0 and np.std(areas) > 0.1


def test_crop_flip_is_deterministic_and_stretches_16_bit():
    frame = (np.linspace(7000, 13000, 48 * 60).reshape(48, 60)).astype(np.uint16)
    config = DataConfig(hflip=1.0)
    first = crop_flip(frame, (32, 32), np.random.default_rng(5), config)
    again = crop_flip(frame, (32, 32), np.random.default_rng(5), config)
    assert first.dtype == np.uint8 and first.shape == (32, 32)
    assert np.array_equal(first, again)
    assert first.max() - first.min() > 60  # the 16-bit range is spread over 8 bits, not clipped
    assert first[:, 0].mean() > first[:, -1].mean()  # flipped: the bright right side is on the left


# ---------------------------------------------------------------- splitting by node and worker


def test_ranks_and_workers_get_disjoint_shards(dataset):
    urls = [str(p) for p in dataset.shards]
    shares = [
        set(stream_for(urls, rank=r, world=2, workers=2, resampled=False).pass_shards(w, 0))
        for r in range(2)
        for w in range(2)
    ]
    for a, b in itertools.combinations(shares, 2):
        assert not a & b
    assert set().union(*shares) == set(urls)
    keys = [set(pass_keys(stream_for(urls, rank=r, world=2, resampled=False))) for r in range(2)]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == dataset.num_samples


def test_too_few_shards_to_split_is_a_clear_error(dataset):
    with pytest.raises(ValueError, match="cannot be split over 4 ranks x 2 workers"):
        stream_for([str(p) for p in dataset.shards], world=4, workers=2, resampled=False)


def test_resampled_workers_draw_different_streams(dataset):
    urls = [str(p) for p in dataset.shards]
    stream = stream_for(urls, world=1, workers=2, resampled=True)
    draws = [tuple(stream.pass_shards(w, p)) for w in range(2) for p in range(3)]
    assert len(set(draws)) > 1 and all(set(d) <= set(urls) for d in draws)


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_continues_exactly(dataset, workers):
    """Batches after a restart from the tracker state equal those of the uninterrupted stream."""
    config = DataConfig(**{**FAST, "batch_size": 5, "workers": workers, "resampled": workers == 2})
    urls = [str(p) for p in dataset.shards]
    loader, tracker = loader_for(
        config, 16, seed=3, rank=0, world_size=1, pin_memory=False, urls=urls
    )
    batches = []
    for images, position in itertools.islice(loader, 9):  # odd count: worker 1 goes next
        tracker.update(position)
        batches.append(images)
    state = tracker.state()
    assert sum(p["offset"] for p in state["positions"]) > 0
    reference = batches[7:]
    loader, tracker = loader_for(
        config, 16, seed=3, rank=0, world_size=1, pin_memory=False, urls=urls
    )
    head = []
    for images, position in itertools.islice(loader, 7):
        tracker.update(position)
        head.append(images)
    resumed, _ = loader_for(
        config,
        16,
        seed=3,
        rank=0,
        world_size=1,
        pin_memory=False,
        urls=urls,
        resume_state=tracker.state(),
    )
    tail = [images for images, _ in itertools.islice(resumed, 2)]
    for a, b in zip(head + tail, batches, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(tail[0], reference[0]) and torch.equal(tail[1], reference[1])


def test_truncated_shard_without_error_is_caught_by_its_length(dataset, tmp_path):
    """A tar cut at a member boundary ends cleanly for tarfile; _info.json's length tells."""
    data = dataset.shards[0].read_bytes()
    marker = data.index(b"s000_0003.cls")  # header of the 4th sample's first member
    cut = tmp_path / "640x512" / "shard-000000.tar"
    cut.parent.mkdir()
    cut.write_bytes(data[:marker] + b"\0" * 1024)
    from pretrain.data import WorkerPosition, expected_lengths

    info = read_info(str(dataset.info_path))
    stream = stream_for([str(cut)], resampled=False)
    stream.shard_lengths = expected_lengths(info)
    stats = WorkerPosition()
    keys = [s["__key__"] for _, s in stream._pass(0, stats)]
    assert sorted(keys) == ["s000_0000", "s000_0001", "s000_0002"] and stats.shard_errors == 1


def test_healthy_shards_give_every_sample_and_no_error(dataset):
    """Each shard's last sample is counted before the next shard opens: no false alarm."""
    from pretrain.data import WorkerPosition, expected_lengths

    stream = stream_for([str(p) for p in dataset.shards], resampled=False)
    stream.shard_lengths = expected_lengths(read_info(str(dataset.info_path)))
    stats = WorkerPosition()
    keys = [s["__key__"] for _, s in stream._pass(0, stats)]
    assert sorted(keys) == sorted(uid for uids in dataset.uids for uid in uids)
    assert stats.shard_errors == 0 and stats.bad_samples == 0


def test_pipe_and_gzipped_shards_stream_like_plain_ones(dataset, tmp_path):
    """`pipe:` URLs (no peek, no seek) and .tar.gz shards give the same samples."""
    import gzip

    plain, second = dataset.shards[0], dataset.shards[1]
    gzipped = tmp_path / "640x512" / "shard-000001.tar.gz"
    gzipped.parent.mkdir()
    gzipped.write_bytes(gzip.compress(second.read_bytes()))
    reference = pass_keys(stream_for([str(plain), str(second)], resampled=False))
    stream = stream_for([f"pipe:cat {plain}", str(gzipped)], resampled=False)
    assert sorted(pass_keys(stream)) == sorted(reference)
    images, _ = next(iter(stream))
    assert images.shape == (4, 1, 16, 16)


def test_tracker_rotates_the_first_worker():
    tracker = StreamTracker(3)
    for worker in (0, 1, 2, 0):
        tracker.update(torch.tensor([worker, 0, 5, 1, 0, 1]))
    assert tracker.first_worker == 1
    assert tracker.totals() == {"bad_samples": 3, "shard_errors": 0}


# ---------------------------------------------------------------- bad input


def test_corrupt_shard_and_bad_sample_are_skipped_and_counted(dataset, tmp_path):
    bad_shard = corrupt_copy(dataset.shards[1], tmp_path / "broken.tar")
    good = np.full((20, 20), 100, np.uint8)
    odd = tmp_path / "odd.tar"
    write_shard(odd, [("ok0001", good, 0), ("ok0002", good, 0)])
    # Replace one PNG payload with junk: same tar layout, undecodable image.
    data = bytearray(odd.read_bytes())
    start = data.index(b"\x89PNG")
    data[start + 20 : start + 40] = b"\xff" * 20
    odd.write_bytes(bytes(data))
    urls = [str(dataset.shards[0]), str(bad_shard), str(odd)]
    stream = stream_for(urls, resampled=False, batch_size=2)
    stream.shard_lengths = {shard_key(str(bad_shard)): 6}  # as _info.json would say
    from pretrain.data import WorkerPosition

    stats = WorkerPosition()
    images = list(itertools.islice(stream.samples(0, stats), 12))
    assert len(images) == 12 and stats.pass_index >= 1  # went past the broken shard, kept going
    assert stats.shard_errors >= 1
    assert stats.bad_samples >= 1


def test_unreachable_url_is_retried_then_named(tmp_path, caplog):
    url = f"http://127.0.0.1:{closed_port()}/ds/shard-000000.tar"
    with pytest.raises(ShardUnreachableError, match="after 2 attempts") as info:
        open_url(url, DataConfig(retries=2, retry_wait=0.01))
    assert url in str(info.value)
    assert "retry 1" in caplog.text
    missing = tmp_path / "nope.tar"
    with pytest.raises(ShardUnreachableError, match=str(missing)):
        open_url(str(missing), DataConfig(retries=1))


def test_http_404_fails_fast_with_the_url(dataset):
    with serve_folder(dataset.root) as base:
        with pytest.raises(ShardUnreachableError, match="HTTP 404 .*shard-000099.tar"):
            open_url(f"{base}/640x512/shard-000099.tar", DataConfig(retries=3, retry_wait=5))
        stream = stream_for([f"{base}/640x512/shard-000099.tar"], resampled=False)
        with pytest.raises(ShardUnreachableError, match="shard-000099"):
            next(iter(stream))


# ---------------------------------------------------------------- Hugging Face token


class _AuthRecorder(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []  # (path, Authorization) per request
    redirect_to: str = ""

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if self.path.startswith("/redirect") and self.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.redirect_to)
            self.end_headers()
        elif self.path.startswith("/private"):
            self.send_response(401)
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_hf_token_sent_to_the_hub_only_and_never_shown(monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    secret = "hf_test_secret_value"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")  # this server plays the Hub
    _AuthRecorder.seen = []
    _AuthRecorder.redirect_to = f"http://localhost:{port}/cdn/file"  # another host name
    try:
        config = DataConfig(retries=1)
        assert open_url(f"http://127.0.0.1:{port}/datasets/x/resolve/main/a.tar", config).read()
        assert open_url(f"http://127.0.0.1:{port}/redirect", config).read() == b"ok"
        with pytest.raises(ShardUnreachableError) as info:
            open_url(f"http://127.0.0.1:{port}/private/a.tar", config)
        assert "HF_TOKEN" in str(info.value) and secret not in str(info.value)
        assert open_url(f"http://localhost:{port}/other.tar", config).read() == b"ok"
    finally:
        server.shutdown()
        server.server_close()
    seen = dict(_AuthRecorder.seen)
    assert seen["/datasets/x/resolve/main/a.tar"] == f"Bearer {secret}"
    assert seen["/redirect"] == f"Bearer {secret}"
    assert seen["/cdn/file"] is None  # dropped when the redirect leaves the Hub's host
    assert seen["/other.tar"] is None  # never sent to other hosts


def test_local_glob_patterns_expand_sorted(tmp_path):
    from pretrain.data import expand_shard_urls

    for name in ("b/x-000001.tar", "a/x-000000.tar", "b/x-000000.tar"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    urls = expand_shard_urls(str(tmp_path / "*" / "*.tar"))
    assert urls == [
        str(tmp_path / n) for n in ("a/x-000000.tar", "b/x-000000.tar", "b/x-000001.tar")
    ]
    with pytest.raises(ValueError, match="matches no file"):
        expand_shard_urls(str(tmp_path / "nothing-*.tar"))
    assert expand_shard_urls("https://host/ds/x-{000000..000001}.tar") == [
        "https://host/ds/x-000000.tar",
        "https://host/ds/x-000001.tar",
    ]


# ---------------------------------------------------------------- epoch length, sampling, start


def test_epoch_length_is_the_selected_shards(dataset):
    one = expand_shard_urls(f"{dataset.root}/640x512/shard-000002.tar")
    assert epoch_samples(DataConfig(), one) == 6  # not the whole _info.json's 24
    two = expand_shard_urls(f"{dataset.root}/640x512/shard-{{000000..000001}}.tar")
    assert epoch_samples(DataConfig(), two) == 12
    assert epoch_samples(DataConfig(), expand_shard_urls(str(dataset.root))) == 24
    assert epoch_samples(DataConfig(samples_per_epoch=7), one) == 7
    info = read_info(str(dataset.info_path))
    unlisted = info.select([*one, "/elsewhere/640x512/other-000000.tar"])
    assert unlisted.num_samples == 12 and unlisted.shard_lengths == (6,)  # estimated, warned


def test_training_epochs_follow_the_selected_shards(tmp_path):
    from pretrain.config import config_from_options
    from pretrain.train import pretrain

    data = make_dataset(tmp_path / "ds", num_shards=3, per_shard=20, height=32, width=32)
    options = dict(
        shards=[str(data.shards[1])], batch_size=4, workers=0, shuffle_buffer=8,
        shuffle_initial=4, model="mae_vit_tiny", model_args=["img_size=32"],
        out=str(tmp_path / "run"), steps=5, epochs=10, warmup_epochs=1, log_every=5,
        ckpt_every=1000, progress=False,
    )  # fmt: skip
    pretrain(config_from_options(options))
    import json

    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["epoch"] == pytest.approx(1.0)  # 5 steps x 4 images = the shard's 20 samples


def test_resampled_draws_make_every_sample_equally_likely(tmp_path):
    """A draw reads the whole shard, so shards are drawn alike whatever their length: a
    sample of the 30-sample shard is read as often as one of the 10-sample shard (drawing
    by length would read it 3x as often, and a one-sample bin's shard 1/30 as often)."""
    urls = [f"{tmp_path}/640x512/shard-00000{i}.tar" for i in range(2)]
    stream = stream_for(urls, resampled=True)
    stream.shard_lengths = {shard_key(urls[0]): 30, shard_key(urls[1]): 10}
    draws = [url for p in range(300) for url in stream.pass_shards(0, p)]
    reads_per_sample = [draws.count(urls[0]) * 30 / 30, draws.count(urls[1]) * 10 / 10]
    assert 0.8 < reads_per_sample[0] / reads_per_sample[1] < 1.25


def test_first_sample_does_not_wait_for_a_buffer_larger_than_the_data(dataset):
    from pretrain.data import WorkerPosition, expected_lengths

    urls = [str(p) for p in dataset.shards]
    stream = stream_for(urls, resampled=False, shuffle_buffer=5000, shuffle_initial=5000)
    stream.shard_lengths = expected_lengths(read_info(str(dataset.info_path)))
    read = []
    original = stream._raw_samples

    def counting(*args):
        for sample in original(*args):
            read.append(sample["__key__"])
            yield sample

    stream._raw_samples = counting
    next(stream._pass(0, WorkerPosition()))
    assert len(read) < dataset.num_samples  # the first sample leaves before the pass is read


@pytest.mark.parametrize("shape", [(512, 640), (40, 50)])  # downscaled and upscaled crops
def test_crop_is_torchvision_bicubic_resized_crop(shape):
    from torchvision.transforms.v2 import functional as tvf

    rng = np.random.default_rng(1)
    frame = (rng.normal(120, 30, shape)).clip(0, 255).astype(np.uint8)
    config = DataConfig(hflip=0.0)
    for seed in range(5):
        out = crop_flip(frame, (64, 64), np.random.default_rng(seed), config)
        top, left, h, w = random_resized_crop_box(*shape, np.random.default_rng(seed), (0.2, 1.0))
        expected = tvf.resized_crop(
            torch.from_numpy(frame)[None], top, left, h, w, [64, 64],
            interpolation=tvf.InterpolationMode.BICUBIC, antialias=True,
        )[0].numpy()  # fmt: skip
        np.testing.assert_array_equal(out, expected)  # MAE's interpolation=3, antialiased
