"""Faults in the shard stream: failing HTTP shards, a dripping server, dead ports, 404, non-tar
files, empty folders, offline mode, secrets in URLs; with and without loader workers."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import io
import itertools
import logging
import shutil
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from pretrain.data import (
    DataConfig,
    NetworkDisabledError,
    ShardUnreachableError,
    dataset_info,
    expand_shard_urls,
    loader_for,
    read_info,
    redact_url,
)
from tests.shardkit import closed_port, make_dataset

FAST = dict(
    batch_size=4, shuffle_buffer=8, shuffle_initial=4, retries=2, retry_wait=0.01, timeout=5.0
)
DRIP_SECONDS = 0.2  # a byte every DRIP_SECONDS: never idle long enough for a read timeout
DRIP_FOR = 20.0  # then it gives up, so a stream without a deadline fails slowly, not forever


class _FaultyHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; /fail500/..., /drip/... and /stall/... misbehave; counts requests."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        type(self).requests.append(self.path)
        if self.path.startswith("/fail500/"):
            self.send_error(500, "broken backend")
        elif self.path.startswith("/drip/"):
            self.send_response(200)
            self.send_header("Content-Length", str(10**6))
            self.end_headers()
            ends = time.monotonic() + DRIP_FOR
            with contextlib.suppress(OSError):
                while time.monotonic() < ends:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(DRIP_SECONDS)
        elif self.path.startswith("/stall/"):
            time.sleep(DRIP_FOR)  # accepts, never answers (until it gives up)
        else:
            super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@contextlib.contextmanager
def faulty_server(folder: Path) -> Iterator[str]:
    _FaultyHandler.requests = []
    handler = functools.partial(_FaultyHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("faults"), num_shards=4, per_shard=6)


def consume(urls: list[str], batches: int, workers: int, **overrides) -> dict[str, int]:
    """Read `batches` batches through the DataLoader; the tracker's error totals."""
    config = DataConfig(**{**FAST, "workers": workers, "resampled": False, **overrides})
    loader, tracker = loader_for(
        config, 16, seed=0, rank=0, world_size=1, pin_memory=False, urls=urls
    )
    for images, position in itertools.islice(loader, batches):
        assert images.shape == (4, 1, 16, 16)
        tracker.update(position)
    return tracker.totals()


def one_line_error(urls: list[str], workers: int, **overrides) -> str:
    with pytest.raises(ShardUnreachableError) as info:
        consume(urls, 50, workers, **overrides)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message and "worker process" not in message
    return message


# ---------------------------------------------------------------- failing shards are skipped


@pytest.mark.parametrize("workers", [0, 2])
def test_a_500_shard_is_skipped_and_counted(dataset, workers):
    with faulty_server(dataset.root) as base:
        good = [f"{base}/640x512/shard-{i:06d}.tar" for i in range(3)]
        urls = [*good, f"{base}/fail500/640x512/shard-000003.tar"]
        totals = consume(urls, 12, workers)  # 12 batches of 4 = two passes over 18 good samples
    assert totals["shard_errors"] >= 1
    assert sum("/fail500/" in path for path in _FaultyHandler.requests) >= FAST["retries"]


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_failing_shards_stop_the_run_naming_them(dataset, workers):
    with faulty_server(dataset.root) as base:
        urls = [f"{base}/fail500/640x512/shard-{i:06d}.tar" for i in range(4)]
        message = one_line_error(urls, workers)
    assert "shards of a pass failed" in message and "--max-shard-failures" in message
    assert "fail500/640x512/shard-0000" in message and "HTTP 500" in message


def test_the_failure_share_is_a_setting(dataset):
    with faulty_server(dataset.root) as base:
        urls = [f"{base}/640x512/shard-000000.tar", f"{base}/fail500/640x512/shard-000001.tar"]
        assert consume(urls, 4, 0)["shard_errors"] >= 1  # 1 of 2 is not more than 0.5
        message = one_line_error(urls, 0, max_shard_failures=0.25)
    assert "1 of the 2 shards" in message and "fail500/640x512/shard-000001.tar" in message


@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_failures_count_against_every_shard_and_name_them(dataset, workers):
    dead = [f"http://127.0.0.1:{closed_port()}/x-{i:06d}.tar" for i in range(2)]
    for seed_urls in (dead, dead[::-1]):  # whichever a pass draws twice, both get tried
        message = one_line_error(seed_urls, workers, resampled=True)
        assert "2 of the 2 shards" in message, message
        assert all(url in message for url in dead), message
    good = str(dataset.shards[0])  # 1 dead of 2 is not more than 0.5: the run goes on
    for urls in ([good, dead[0]], [dead[0], good]):
        assert consume(urls, 12, workers, resampled=True)["shard_errors"] >= 1


@pytest.mark.parametrize("workers", [0, 2])
def test_a_dripping_server_cannot_hang_training(dataset, workers):
    with faulty_server(dataset.root) as base:
        urls = [f"{base}/drip/640x512/shard-000000.tar", f"{base}/drip/640x512/shard-000001.tar"]
        message = one_line_error(urls, workers, read_deadline=1.0)
    assert "--read-deadline" in message and "drip/640x512" in message


# ---------------------------------------------------------------- errors that end at once


@pytest.mark.parametrize("workers", [0, 2])
def test_dead_port_404_and_non_tar_give_one_line(dataset, tmp_path, workers):
    dead = f"http://127.0.0.1:{closed_port()}/ds/640x512/shard-000000.tar"
    assert dead in one_line_error([dead], workers, resampled=True)
    junk = tmp_path / "notes.tar"
    junk.write_text("this is not a tar archive\n" * 50)
    assert str(junk) in one_line_error([str(junk)], workers, resampled=True)
    with faulty_server(dataset.root) as base:
        missing = f"{base}/640x512/shard-000099.tar"
        message = one_line_error([missing], workers, resampled=True, retries=5, retry_wait=30)
    assert "HTTP 404" in message and missing in message


def test_empty_folder_and_missing_path_fail_at_once(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="folder without _info.json"):
        expand_shard_urls(str(empty), config=DataConfig(retries=5, retry_wait=30))
    with pytest.raises(ValueError, match="no such file"):
        expand_shard_urls(str(tmp_path / "gone" / "shard-000000.tar"))
    with pytest.raises(ShardUnreachableError, match="no such file"):
        read_info(str(tmp_path / "gone" / "_info.json"), config=DataConfig(retry_wait=30))


def test_info_json_follows_retries_and_timeout(dataset, caplog):
    dead = f"http://127.0.0.1:{closed_port()}/ds/_info.json"
    with pytest.raises(ShardUnreachableError, match="after 1 attempts"):
        expand_shard_urls(dead, config=DataConfig(retries=1, retry_wait=30))
    with pytest.raises(ShardUnreachableError, match="after 3 attempts"):
        expand_shard_urls(dead, config=DataConfig(retries=3, retry_wait=0.01))
    with faulty_server(dataset.root) as base:
        config = DataConfig(retries=1, timeout=0.5)
        with pytest.raises(ShardUnreachableError, match="after 1 attempts .*timed out"):
            expand_shard_urls(f"{base}/stall/_info.json", config=config)
        shards = [f"{base}/stall/640x512/shard-000000.tar"]
        assert dataset_info(config, shards) is None  # probed with the same limits


def test_hf_hub_offline_means_no_network(dataset, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with faulty_server(dataset.root) as base:
        with pytest.raises(NetworkDisabledError, match="HF_HUB_OFFLINE") as info:
            expand_shard_urls(f"{base}/_info.json")
        assert "\n" not in str(info.value)
        shards = [f"{base}/640x512/shard-000000.tar"]
        with pytest.raises(NetworkDisabledError):
            dataset_info(DataConfig(), shards)
        with pytest.raises(NetworkDisabledError):
            consume(shards, 1, 0)
        assert _FaultyHandler.requests == []
    assert expand_shard_urls(str(dataset.root))  # local data still works offline


def test_secrets_in_url_queries_are_redacted(dataset, caplog):
    assert redact_url("https://h/x.tar?X-Amz-Signature=abc&token=s3cr3t") == (
        "https://h/x.tar?X-Amz-Signature=***&token=***"
    )
    assert redact_url("https://user:pw@h/x.tar") == "https://***@h/x.tar"
    assert redact_url("/data/a.tar") == "/data/a.tar"
    dead = f"http://127.0.0.1:{closed_port()}/x.tar?token=s3cr3t-value"
    with faulty_server(dataset.root) as base:
        failing = f"{base}/fail500/640x512/shard-000000.tar?sig=s3cr3t-value"
        with pytest.raises(ShardUnreachableError) as info:
            consume([dead, failing], 3, 0)
    assert "s3cr3t" not in str(info.value) and "token=***" in str(info.value)
    assert "s3cr3t" not in caplog.text and "sig=***" in caplog.text


def test_bad_fault_settings_are_refused():
    with pytest.raises(ValueError, match="max-shard-failures must be a share"):
        DataConfig(max_shard_failures=1.5)
    with pytest.raises(ValueError, match="read-deadline"):
        DataConfig(read_deadline=0)


# ---------------------------------------------------------------- hostile shards


class _Zeros(io.RawIOBase):
    """`size` zero bytes made on the fly: a huge member without holding it in the test."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self._left)
        buffer[:count] = bytes(count)
        self._left -= count
        return count


def with_huge_member(good: Path, target: Path, size: int) -> Path:
    """`good`'s samples after a `size`-byte `.json` member the loader does not read."""
    with tarfile.open(good) as source, tarfile.open(target, "w") as tar:
        info = tarfile.TarInfo("s000_0000.json")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
        for member in source:
            tar.addfile(member, source.extractfile(member))
    return target


def with_size_field(good: Path, target: Path, member: int, field: bytes) -> Path:
    """A copy of `good` whose `member`-th header holds `field` as its size, checksum fixed."""
    data = bytearray(good.read_bytes())
    with tarfile.open(good) as tar:
        offset = tar.getmembers()[member].offset
    header = data[offset : offset + 512]
    header[124:136] = field.ljust(12, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)
    data[offset : offset + 512] = header
    target.write_bytes(bytes(data))
    return target


def test_an_unused_huge_member_over_http_is_skipped_in_bounded_memory(dataset, tmp_path):
    """A 48 MiB `.json` member in a shard served over HTTP: the loader drops it a block at a
    time instead of holding it (a 1.5 GiB one took 2.3 GiB of a worker before)."""
    with_huge_member(dataset.shards[0], tmp_path / "huge.tar", 48 << 20)
    with faulty_server(tmp_path) as base:
        tracemalloc.start()
        try:
            totals = consume([f"{base}/huge.tar"], 3, 0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert totals["shard_errors"] == 0 and totals["bad_samples"] == 0
    assert peak < 24 << 20, f"peak {peak / 2**20:.0f} MiB"


FOREIGN_ERRORS = ("EOFError", "LZMAError", "MemoryError", "OSError", "BadGzipFile", "zlib",
                  "OverflowError", "invalid literal", "Traceback")  # fmt: skip


def test_hostile_shards_are_skipped_with_the_readers_own_reason(dataset, tmp_path, caplog):
    good = dataset.shards[0]
    packed = gzip.compress(good.read_bytes(), mtime=0)
    hostile = {
        "size-minus-one.tar": (with_size_field(good, tmp_path / "size-minus-one.tar", 0, b"-1"),
                               "size field b'-1' is not a number"),
        "lying-png.tar": (with_size_field(good, tmp_path / "lying-png.tar", 2, b"77777777777"),
                          "over the"),
        "cut.tar.gz": (tmp_path / "cut.tar.gz", "gzip stream cut short"),
        "flipped.tar.gz": (tmp_path / "flipped.tar.gz", "damaged gzip data"),
    }  # fmt: skip
    (tmp_path / "cut.tar.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "flipped.tar.gz").write_bytes(
        packed[:200] + bytes([packed[200] ^ 0x55]) + packed[201:]
    )
    shutil.copy(good, tmp_path / "good.tar")
    with faulty_server(tmp_path) as base:
        urls = [f"{base}/good.tar", *(f"{base}/{name}" for name in hostile)]
        with caplog.at_level(logging.WARNING, logger="pretrain.data"):
            totals = consume(urls, 6, 0, max_shard_failures=0.9)
    assert totals["shard_errors"] >= len(hostile)
    skipped = [r.getMessage() for r in caplog.records if "skipping shard" in r.getMessage()]
    for name, (_, reason) in hostile.items():
        lines = [line for line in skipped if f"/{name}:" in line]
        assert lines and all(reason in line for line in lines), (name, skipped)
    assert not [line for line in skipped if any(word in line for word in FOREIGN_ERRORS)]
