"""verify reads each tar as a stream: its peak memory does not grow with the shard's size, and
damaged tars still give one-line problems naming the shard."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from inf590k.build import catalog as cat
from inf590k.build.shard.tar import add_sample, encode_png, tar_end
from inf590k.dataset import verify as verify_module
from inf590k.dataset.layout import sample_json, sidecar_path, stats_path, tar_path
from inf590k.dataset.verify import _ShardCheck, check_shard

SIDE = 192  # noise PNGs of ~37 KB


def noise_row(index: int, side: int = SIDE) -> dict:
    return {
        "uid": f"noise-{index:05d}",
        "source": "noise",
        "relpath": f"{index}.png",
        "status": cat.STATUS_OK,
        "width": side,
        "height": side,
        "bit_depth": 8,
        "license": "CC0 1.0",
        "res_bin": "s0-255",
    }


def write_noise_shard(dataset: Path, relpath: str, samples: int, side: int = SIDE) -> _ShardCheck:
    """A shard as `shard` writes it (tar, sidecar, stats) of `samples` noise frames."""
    rng = np.random.default_rng(samples)
    table = cat.rows_to_table([noise_row(i, side) for i in range(samples)])
    rows = table.to_pylist()
    target = tar_path(dataset, relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as handle:

        class Sink:
            def write(self, data: bytes) -> None:
                nonlocal size
                digest.update(data)
                handle.write(data)
                size += len(data)

        sink = Sink()
        for row in rows:
            pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)
            add_sample(sink, row["uid"], 0, sample_json(row), encode_png(pixels, 1))
        sink.write(tar_end(size))
    cat.write_parquet_atomic(table, sidecar_path(dataset, relpath))
    stats = {"shard": relpath, "count": samples, "bytes": size, "sha256": digest.hexdigest()}
    stats_path(dataset, relpath).write_text(json.dumps(stats))
    return _ShardCheck(dataset, relpath, digest.hexdigest(), samples, {"noise": 0}, False, True)


def peak_bytes(check: _ShardCheck) -> tuple[int, list[str]]:
    tracemalloc.start()
    try:
        count, problems, _ = check_shard(check)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == check.expected_count or problems
    return peak, problems


def test_peak_memory_does_not_grow_with_the_shard(tmp_path):
    """Same samples, 64x the bytes: the peak grows by about one sample, not by the tar; 10x the
    samples: by their sidecar rows only (a few KB each)."""
    small = write_noise_shard(tmp_path, "s0-255/s0-255-000000.tar", 40, side=64)
    large = write_noise_shard(tmp_path, "s0-255/s0-255-000001.tar", 40, side=512)
    many = write_noise_shard(tmp_path, "s0-255/s0-255-000002.tar", 400, side=64)
    sizes = {c.relpath: tar_path(tmp_path, c.relpath).stat().st_size for c in (small, large, many)}
    assert sizes[large.relpath] > 10_000_000
    peak_bytes(small)  # imports and caches warmed
    peaks = {}
    for check in (small, large, many):
        peaks[check.relpath], problems = peak_bytes(check)
        assert problems == []
    one_sample = 512 * 512 + 4096  # the largest sample's members
    assert peaks[large.relpath] < peaks[small.relpath] + 3 * one_sample, peaks
    assert peaks[large.relpath] < sizes[large.relpath] / 4  # reading it whole: over 1x
    assert peaks[many.relpath] < peaks[small.relpath] + 360 * 4096, peaks


@pytest.fixture
def shard(tmp_path) -> _ShardCheck:
    return write_noise_shard(tmp_path, "s0-255/s0-255-000000.tar", 30)


def rewrite(check: _ShardCheck, change) -> str:
    path = tar_path(check.dataset, check.relpath)
    path.write_bytes(change(path.read_bytes()))
    return f"data/{check.relpath}"


def one_line_each(problems: list[str], name: str) -> None:
    """Every problem one line naming the shard (or its sidecar, named by the shard's stem)."""
    stem = Path(name).stem
    assert problems and all("\n" not in p and p.startswith((name, stem)) for p in problems), problems


def test_truncated_tar(shard):
    name = rewrite(shard, lambda data: data[: len(data) // 2 + 100])
    _, problems, _ = check_shard(shard)
    one_line_each(problems, name)
    assert any("sha256 mismatch" in p for p in problems)
    assert any("unreadable tar" in p and "truncated" in p for p in problems)


def test_garbage_header(shard):
    def damage(data: bytes) -> bytes:
        middle = len(data) // 2 // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE
        return data[:middle] + b"\xff" * tarfile.BLOCKSIZE + data[middle + tarfile.BLOCKSIZE :]

    name = rewrite(shard, damage)
    _, problems, _ = check_shard(shard)
    one_line_each(problems, name)
    assert any("sha256 mismatch" in p for p in problems)
    assert any("unreadable tar" in p or "count mismatch" in p or "sample" in p for p in problems)


def test_split_sample_and_oversized_member(shard, monkeypatch):
    """A sample whose members are not next to each other, and a member over the limit."""
    path = tar_path(shard.dataset, shard.relpath)
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    moved = members[:1] + members[4:6] + members[1:4] + members[6:]
    rebuilt = path.with_name("rebuilt.tar")
    with tarfile.open(rebuilt, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in moved:
            tar.addfile(member, io.BytesIO(data))
    rebuilt.replace(path)
    monkeypatch.setattr(verify_module, "MAX_MEMBER_BYTES", 30_000)
    _, problems, _ = check_shard(shard)
    name = f"data/{shard.relpath}"
    one_line_each(problems, name)
    assert any("noise-00000: its members are not next to each other" in p for p in problems)
    assert any("over 30000 (not read)" in p for p in problems)


def read_members(check: _ShardCheck) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(tar_path(check.dataset, check.relpath)) as tar:
        return [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar]


def write_members(check: _ShardCheck, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            tar.addfile(member, None if data is None else io.BytesIO(data))
    tar_path(check.dataset, check.relpath).write_bytes(buffer.getvalue())
    return f"data/{check.relpath}"


def member_named(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"") -> tuple[tarfile.TarInfo, bytes | None]:
    member = tarfile.TarInfo(name)
    member.type = kind
    if kind == tarfile.SYMTYPE:
        member.linkname = "/etc/passwd"
    member.size = len(data)
    return member, data if kind == tarfile.REGTYPE else None


def test_a_repeated_member_is_one_line(shard):
    members = read_members(shard)
    name = write_members(shard, members[:3] + [members[2]] + members[3:])  # noise-00000.png twice
    _, problems, _ = check_shard(shard)
    one_line_each(problems, name)
    assert [p for p in problems if "noise-00000" in p] == [
        f"{name}: sample noise-00000: member noise-00000.png appears more than once"
    ]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE])
def test_a_link_or_folder_member_is_named_and_the_rest_is_read(shard, kind):
    members = read_members(shard)
    png = members[2][0].name
    name = write_members(shard, members[:2] + [member_named(png, kind)] + members[3:])
    count, problems, _ = check_shard(shard)
    one_line_each(problems, name)
    assert count == shard.expected_count  # the tar was read to its end
    assert [p for p in problems if "noise-00000" in p] == [
        f"{name}: sample noise-00000: member {png!r} is not a plain file (a link or folder)"
    ]


@pytest.mark.parametrize("bad", ["../evil.png", "noise-00000", "a/b.png"])
def test_a_member_not_named_key_dot_extension(shard, bad):
    name = write_members(shard, read_members(shard) + [member_named(bad, data=b"x")])
    _, problems, _ = check_shard(shard)
    one_line_each(problems, name)
    assert f"{name}: member {bad!r} is not named <sample key>.<extension>" in problems


def test_a_huge_extended_header_is_not_read(shard, monkeypatch):
    """tarfile reads a pax header whole: one over the cap is refused before it is read."""
    members = read_members(shard)
    first, data = members[0]
    first.pax_headers = {"comment": "x" * 5000}
    name = write_members(shard, [(first, data)] + members[1:])
    monkeypatch.setattr(verify_module, "MAX_HEADER_BYTES", 4096)
    _, problems, _ = check_shard(shard)
    one_line_each(problems, name)
    assert any("unreadable tar (an extended header of" in p and "over 4096 (not read)" in p for p in problems)
    monkeypatch.setattr(verify_module, "MAX_HEADER_BYTES", 1 << 20)
    _, problems, _ = check_shard(shard)
    assert not any("unreadable" in p for p in problems)
