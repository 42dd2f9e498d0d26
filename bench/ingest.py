"""Ingest throughput against a bare decode + pHash + sha256 loop over the same files.

    python bench/ingest.py [--count 1500] [--workers 2]
    python bench/ingest.py --hostile

Prints images/s of: the bare loop (cv2.imdecode + imagehash.phash + hashlib.sha256),
`inf590k ingest` with one worker, and with N workers; then the ratios against the targets
(single-worker ingest >= 0.8x the bare loop; N workers >= 0.8 * N x one worker).

The machine may be shared, so the three runs are interleaved for --rounds rounds (the order
rotates each round): rates are medians over rounds, and each ratio is the median of the
rounds' own ratios (runs of one round, next to each other, see about the same load).

`--executor ray` instead prints `inf590k ingest --executor ray` against the local pool at N
workers on the same files (target >= 0.8x); Ray is started once, before the timed runs.

`--hostile` instead writes hostile sources and prints the peak RSS of
`inf590k ingest --workers 1` on each (one process, the worker itself), against the target of
1 GiB, with the reason each file got: an 11000x11000 Radiance HDR named .png, an 11000x11000
float32 deflate TIFF, a zip member inflating to 1.1 GB, a 300 MB tar whose members are not in
sorted order, a 10000x10000 float32 RGB TIFF (under the pixel cap, over the byte limit), a cut
streamed zip whose member inflates to 1.1 GB, and files whose headers claim 64x64 but decode to
10000x10000 (run under --max-pixels 1000000: TIFF size tags given twice, JPEG with RST0 and a
fake frame header, JP2 with an ihdr inside an xml box, PGM with a CR-ended comment, Radiance
HDR with a 127-byte header line). Then the peak RSS of verify's per-sample check on a PNG whose
tEXt chunk claims 2 GiB, and what importing the CLI costs (and torch, if that imports it).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from statistics import median

import cv2
import imagehash
import numpy as np
from PIL import Image

REPO = str(Path(__file__).resolve().parents[1])
sys.path.insert(0, REPO)
# worker processes start from a fresh interpreter (forkserver): they find this checkout too
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))

from inf590k.build.ingest import IngestConfig, ingest  # noqa: E402
from inf590k.execution.units import ExecutionOptions  # noqa: E402


def thermal_jpeg(index: int, rng: np.random.Generator) -> bytes:
    """A 640x512 IR-like 8-bit JPEG: smooth background, warm blobs, column noise."""
    yy, xx = np.mgrid[0:512, 0:640].astype(np.float32)
    phase = rng.uniform(0, 6.28, 3)
    frame = 90 + 35 * np.sin(xx / 97 + phase[0]) + 25 * np.cos(yy / 71 + phase[1])
    for _ in range(4):
        cx, cy, r = rng.uniform(0, 640), rng.uniform(0, 512), rng.uniform(8, 40)
        frame += 90 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
    frame += rng.normal(0, 2.5, 640)[None, :] + rng.normal(0, 2, frame.shape)
    ok, buf = cv2.imencode(
        ".jpg", np.clip(frame, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90]
    )
    assert ok
    return buf.tobytes()


def make_corpus(root: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"seq{i // 500:02d}" / f"frame_{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(thermal_jpeg(i, rng))
        paths.append(path)
    return paths


def bare_loop(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        data = path.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        imagehash.phash(Image.fromarray(image))
        hashlib.sha256(data).hexdigest()
    return len(paths) / (time.perf_counter() - started)


def interleaved(runs: dict[str, Callable[[], float]], rounds: int) -> list[dict[str, float]]:
    """Each run once per round, in an order that rotates every round (no run always goes
    first, after the same neighbour, or into a warm cache); one {name: rate} per round."""
    names = list(runs)
    results = []
    for index in range(rounds):
        shift = index % len(names)
        order = names[shift:] + names[:shift]
        results.append({name: runs[name]() for name in order})
    return results


def ingest_rate(
    root: Path, build: Path, workers: int, count: int, executor: str = "local"
) -> float:
    shutil.rmtree(build, ignore_errors=True)
    started = time.perf_counter()
    ingest(
        IngestConfig(sources=(("folder", root),), build=build, execution=ExecutionOptions(workers=workers, progress=False, executor=executor))
    )
    return count / (time.perf_counter() - started)


def ray_against_local(root: Path, tmp: Path, workers: int, count: int, rounds: int) -> None:
    """Ray executor against the local pool at `workers`, on a Ray of `workers` CPUs."""
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        results = interleaved(
            {
                "local": lambda: ingest_rate(root, tmp / "local", workers, count),
                "ray": lambda: ingest_rate(root, tmp / "ray", workers, count, "ray"),
            },
            rounds,
        )
    finally:
        ray.shutdown()
    local, on_ray = (median([r[name] for r in results]) for name in ("local", "ray"))
    ratio = median([r["ray"] / r["local"] for r in results])
    print(f"frames: {count} x 640x512 8-bit JPEG, median of {rounds} interleaved rounds")
    print(f"ingest, local pool, {workers} workers: {local:8.1f} img/s")
    print(
        f"ingest, Ray, {workers} CPUs:           {on_ray:8.1f} img/s   ratio {ratio:.2f}x local pool (target >= 0.80)"
    )


# ----------------------------------------------------------------------------- hostile input

BOMB_SIDE = 11000
GIB = 1 << 30


def radiance_hdr(path: Path, side: int = BOMB_SIDE) -> None:
    """A valid run-length encoded Radiance HDR of side x side black pixels (~7.7 MB)."""
    runs = bytearray()
    left = side
    while left:
        count = min(127, left)
        runs += bytes((128 + count, 0))
        left -= count
    scanline = bytes((2, 2, side >> 8, side & 0xFF)) + bytes(runs) * 4
    with open(path, "wb") as handle:
        handle.write(f"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y {side} +X {side}\n".encode())
        for _ in range(side):
            handle.write(scanline)


FLOAT_TIFF_SCRIPT = """
import sys
from PIL import Image
side = int(sys.argv[2])
Image.new("F", (side, side), 0.5).save(sys.argv[1], format="TIFF", compression="tiff_adobe_deflate")
"""


def float_tiff(path: Path, side: int = BOMB_SIDE) -> None:
    """An 11000x11000 float32 deflate TIFF (~1.5 MB), written by a child process."""
    subprocess.run([sys.executable, "-c", FLOAT_TIFF_SCRIPT, str(path), str(side)], check=True)


def zip_bomb(path: Path, inflated: int = 1_100_000_000) -> None:
    """A zip whose one PNG-named member inflates to 1.1 GB (written in blocks)."""
    block = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("frames/big.png", "w", force_zip64=True) as member:
            member.write(b"\x89PNG\r\n\x1a\n")
            written = 8
            while written < inflated:
                member.write(block[: min(len(block), inflated - written)])
                written += len(block)


def shuffled_tar(path: Path, total: int = 300 << 20, member: int = 1 << 20) -> None:
    """A ~300 MB tar of ~1 MB noise PNGs stored in shuffled (not sorted) member order."""
    rng = np.random.default_rng(0)
    images = [
        cv2.imencode(".png", rng.integers(0, 256, (1000, 1000), dtype=np.uint8))[1].tobytes()
        for _ in range(8)
    ]
    count = total // member
    order = rng.permutation(count)
    with tarfile.open(path, "w") as archive:
        for index in order:
            data = images[index % len(images)]
            info = tarfile.TarInfo(f"frames/{index:05d}.png")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


# header lies: the header says 64x64, the decoder makes LIE_SIDE x LIE_SIDE of the file (at
# OpenCV's own pixel limit, so only the header check can stop it); ingested under LIE_CAP
LIE_SIDE = 10000
LIE_CAP = 1_000_000


def little_tiff(path: Path, entries: list[tuple[int, int, list[int]]], data: bytes) -> None:
    """A little-endian TIFF: the data at offset 8, then one IFD of (tag, type, values) in the
    order given (SHORT = 3, LONG = 4; arrays too long for the entry go after the IFD)."""
    ifd_at = 8 + len(data)
    ifd_size = 2 + 12 * len(entries) + 4
    arrays, body = b"", b""
    for tag, kind, values in entries:
        packed = struct.pack(f"<{len(values)}{'H' if kind == 3 else 'I'}", *values)
        if len(packed) <= 4:
            field = packed.ljust(4, b"\0")
        else:
            field = struct.pack("<I", ifd_at + ifd_size + len(arrays))
            arrays += packed
        body += struct.pack("<HHI", tag, kind, len(values)) + field
    ifd = struct.pack("<H", len(entries)) + body + struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", ifd_at) + data + ifd + arrays)


def float_rgb_tiff(path: Path, side: int = LIE_SIDE, repeated_size: bool = False) -> None:
    """side x side float32 RGB (12 bytes a pixel: 1.2 GB decoded) as deflate strips of zeros,
    every strip sharing one compressed block (~10 KB on disk); `repeated_size` adds a second
    ImageWidth and ImageLength saying 64x64 after the real ones (libtiff keeps the first)."""
    rows = 64
    strips = -(-side // rows)
    block = zlib.compress(bytes(side * rows * 12))
    entries = [
        (256, 4, [side]),
        (257, 4, [side]),
        (258, 3, [32] * 3),
        (259, 3, [8]),
        (262, 3, [2]),
        (273, 4, [8] * strips),
        (277, 3, [3]),
        (278, 4, [rows]),
        (279, 4, [len(block)] * strips),
        (284, 3, [1]),
        (339, 3, [3] * 3),
    ]
    if repeated_size:
        entries[1:1] = [(256, 4, [64])]
        entries[3:3] = [(257, 4, [64])]
    little_tiff(path, entries, block)


# a 64x64 frame header, then a scan header (so a careless walk also finds the real end)
FAKE_FRAME = (
    b"\xff\xc0\x00\x0b\x08\x00\x40\x00\x40\x01\x01\x11\x00\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
)


def jpeg_rst0_fake_sof(path: Path, side: int = LIE_SIDE) -> None:
    """A side x side grey JPEG with RST0 (no length) after SOI and an APP1 segment hiding a
    64x64 frame header where a walk reading a length after every marker lands."""
    ok, buffer = cv2.imencode(".jpg", np.zeros((side, side), np.uint8))
    assert ok
    good = buffer.tobytes()
    payload = bytearray(0xFFFB)
    start = 0xFFE1 - 4  # RST0's "length" is FF E1, the APP1 marker: 4 + 0xFFE1 from its start
    payload[start : start + len(FAKE_FRAME)] = FAKE_FRAME
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + bytes(payload)
    path.write_bytes(good[:2] + b"\xff\xd0" + app1 + good[2:])


JP2_SCRIPT = """
import io, struct, sys
from PIL import Image
side = int(sys.argv[2])
buffer = io.BytesIO()
Image.new("L", (side, side), 0).save(buffer, format="JPEG2000", no_jp2=False, tile_size=(1024, 1024))
data = buffer.getvalue()
after_ftyp = 12 + struct.unpack(">I", data[12:16])[0]
text = b"<note>ihdr" + struct.pack(">IIHBBBB", 64, 64, 1, 7, 7, 0, 0) + b"</note>"
xml = struct.pack(">I", 8 + len(text)) + b"xml " + text
open(sys.argv[1], "wb").write(data[:after_ftyp] + xml + data[after_ftyp:])
"""


def jp2_ihdr_in_xml(path: Path, side: int = LIE_SIDE) -> None:
    """A side x side grey JP2 whose earlier `xml ` box holds the bytes of a 64x64 ihdr (encoded
    by a child process: OpenJPEG takes ~0.5 GB for it)."""
    subprocess.run([sys.executable, "-c", JP2_SCRIPT, str(path), str(side)], check=True)


def pgm_cr_comment(path: Path, side: int = LIE_SIDE) -> None:
    """A side x side 8-bit PGM whose comment ends with CR: OpenCV reads the size after it; a
    reader ending comments at LF only reads the next line, 64 64."""
    with open(path, "wb") as handle:
        handle.write(f"P5\n#\r{side} {side}\n64 64\n255\n".encode())
        for _ in range(side):
            handle.write(bytes(side))


def zero_runs(count: int) -> bytes:
    """`count` zeros of one RGBE channel as run-length pairs (runs of at most 127)."""
    return b"".join(bytes((128 + min(127, count - i), 0)) for i in range(0, count, 127))


def radiance_long_line(path: Path, side: int = LIE_SIDE) -> None:
    """A run-length encoded side x side HDR whose 127-byte header line makes OpenCV (reading
    lines 127 bytes at a time) end the header early and read `-Y side +X side`; the first
    scanline's literal red values hold the empty line and `-Y 64 +X 64` a reader of whole
    lines takes for the size."""
    fake = b"\n\n-Y 64 +X 64\n"
    first = (
        bytes((2, 2, side >> 8, side & 0xFF, len(fake)))
        + fake
        + zero_runs(side - len(fake))
        + zero_runs(side) * 3
    )
    scanline = bytes((2, 2, side >> 8, side & 0xFF)) + zero_runs(side) * 4
    with open(path, "wb") as handle:
        handle.write(
            b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n"
            + b"X" * 127
            + f"\n-Y {side} +X {side}\n".encode()
        )
        handle.write(first)
        for _ in range(side - 1):
            handle.write(scanline)


class Unseekable(io.RawIOBase):
    """A write-only stream: zipfile writes each member's sizes after its data (flag bit 3)."""

    def __init__(self, handle) -> None:  # noqa: ANN001 - a binary file
        super().__init__()
        self.handle = handle

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        return self.handle.write(data)


def cut_streamed_zip(path: Path, inflated: int = 1_100_000_000) -> None:
    """A streamed zip (sizes after the data) with one good frame and one member inflating to
    1.1 GB, cut before its index: finding that member's end means inflating it (bounded)."""
    block = bytes(1 << 20)
    frame = cv2.imencode(
        ".png", np.random.default_rng(0).integers(0, 256, (480, 640), dtype=np.uint8)
    )[1]
    with (
        open(path, "wb") as handle,
        zipfile.ZipFile(Unseekable(handle), "w", zipfile.ZIP_DEFLATED) as archive,
    ):
        archive.writestr("frames/good.png", frame.tobytes())
        with archive.open("frames/big.png", "w", force_zip64=True) as member:
            member.write(b"\x89PNG\r\n\x1a\n")
            for written in range(0, inflated, len(block)):
                member.write(block[: min(len(block), inflated - written)])
    data = path.read_bytes()
    index = data.find(
        b"PK\x01\x02", len(data) - 4096
    )  # the central directory: 2 entries at the end
    path.write_bytes(data[:index])


# label -> (folder name, writer, --max-pixels or None for the default)
HOSTILE = {
    "11000x11000 Radiance HDR named .png": ("hdr", lambda d: radiance_hdr(d / "frame.png"), None),
    "11000x11000 float32 deflate TIFF": ("tif", lambda d: float_tiff(d / "frame.tif"), None),
    "zip member inflating to 1.1 GB": ("zip", lambda d: zip_bomb(d / "bomb.zip"), None),
    "300 MB tar, shuffled member order": ("tar", lambda d: shuffled_tar(d / "shuffled.tar"), None),
    "10000x10000 float32 RGB TIFF (byte limit)": (
        "f32",
        lambda d: float_rgb_tiff(d / "rgb.tif"),
        None,
    ),
    "cut streamed zip, member of 1.1 GB": ("czip", lambda d: cut_streamed_zip(d / "cut.zip"), None),
    "lie: TIFF size tags given twice": (
        "tag2",
        lambda d: float_rgb_tiff(d / "f.tif", repeated_size=True),
        LIE_CAP,
    ),
    "lie: JPEG RST0 + fake SOF": ("rst0", lambda d: jpeg_rst0_fake_sof(d / "f.jpg"), LIE_CAP),
    "lie: JP2 ihdr inside an xml box": ("jp2", lambda d: jp2_ihdr_in_xml(d / "f.png"), LIE_CAP),
    "lie: PGM comment ended by CR": ("pgm", lambda d: pgm_cr_comment(d / "f.png"), LIE_CAP),
    "lie: HDR 127-byte header line": ("hdr127", lambda d: radiance_long_line(d / "f.png"), LIE_CAP),
}


# Prepended to a child's code: at exit it prints its own peak RSS (VmHWM). wait4's figure
# would not do: the child shares this process's memory until it execs, and Linux keeps that
# high-water mark in the child's maximum.
PEAK_REPORT = """
import atexit, sys
def _report_peak():
    status = open("/proc/self/status").read()
    print(f"\\npeak-rss-kib {status.split('VmHWM:')[1].split()[0]}", file=sys.stderr)
atexit.register(_report_peak)
"""


def peak_rss_of(code: str, *args: str) -> tuple[int, str]:
    """Peak RSS (bytes) of a Python child running `code` from this checkout, and its output."""
    env = {**os.environ, "PYTHONPATH": REPO}
    command = [sys.executable, "-c", PEAK_REPORT + code, *args]
    proc = subprocess.run(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output, marker, peak = proc.stdout.rpartition("peak-rss-kib ")
    if not marker:  # killed before its exit handlers ran
        return -1, f"no peak reported (exit status {proc.returncode}): {proc.stdout.strip()[-200:]}"
    return int(peak.split()[0]) * 1024, output.strip()


def peak_rss_of_ingest(source: Path, build: Path, max_pixels: int | None = None) -> tuple[int, str]:
    """Peak RSS (bytes) of `inf590k ingest --workers 1` on one source (it ingests in its own
    process), and its summary line."""
    args = ["ingest", "--build", str(build), "--source", f"folder={source}", "--workers", "1"]
    if max_pixels is not None:
        args += ["--max-pixels", str(max_pixels)]
    peak, output = peak_rss_of("from cli import main; main()", *args)
    return peak, output.splitlines()[0] if output else ""


VERIFY_SCRIPT = """
import sys
from inf590k.dataset.layout import sample_json
from inf590k.dataset.verify import sample_problem
data = open(sys.argv[1], "rb").read()
row = {"uid": "k", "source": "s", "width": 640, "height": 480, "bit_depth": 8}
members = {"cls": b"0", "json": sample_json(row), "png": data}
print(sample_problem("k", members, row, {"s": 0}, raw=False))
"""

IMPORT_SCRIPT = """
import sys
import cli, inf590k.build.ingest, inf590k.dataset.verify
print("torch" in sys.modules)
"""


def png_with_2gib_text(path: Path) -> None:
    """A 640x480 PNG with a tEXt chunk claiming 0x7FFFFFF0 bytes after its IHDR."""
    good = cv2.imencode(".png", np.zeros((480, 640), np.uint8))[1].tobytes()
    text = struct.pack(">I", 0x7FFFFFF0) + b"tEXt" + b"Comment\0" + bytes(56)
    path.write_bytes(good[:33] + text + good[33:])


def first_reasons(build: Path) -> str:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(build / "catalog", columns=["status", "reason"]).to_pylist()
    except (OSError, ValueError):
        return ""
    return "; ".join(sorted({r["reason"] for r in rows if r["status"] == "rejected"}))[:160]


def hostile(tmp: Path) -> None:
    print("peak RSS of `inf590k ingest --workers 1` (target <= 1 GiB each):")
    for label, (name, make, max_pixels) in HOSTILE.items():
        folder = tmp / name
        folder.mkdir()
        make(folder)
        source = next(folder.iterdir()) if name in ("zip", "tar", "czip") else folder
        peak, line = peak_rss_of_ingest(source, tmp / f"build-{name}", max_pixels)
        verdict = "ok" if peak <= GIB else "OVER"
        cap = f" --max-pixels {max_pixels}" if max_pixels else ""
        print(f"  {label + cap:62s} {peak / 2**20:7.0f} MiB  {verdict}   [{line}]")
        reasons = first_reasons(tmp / f"build-{name}")
        if reasons:
            print(f"  {'':62s} {reasons}")
        shutil.rmtree(folder)
    png = tmp / "text.png"
    png_with_2gib_text(png)
    peak, output = peak_rss_of(VERIFY_SCRIPT, str(png))
    verdict = "ok" if peak <= GIB else "OVER"
    print(
        f"peak RSS of verify's per-sample check, PNG whose tEXt chunk claims 2 GiB: {peak / 2**20:.0f} MiB  {verdict}"
    )
    print(f"  {output[:160]}")
    peak, output = peak_rss_of(IMPORT_SCRIPT)
    torch_line = "torch is not imported"
    if output.splitlines()[-1] == "True":
        torch_peak, _ = peak_rss_of("import torch")
        torch_line = (
            f"torch is imported: {torch_peak / 2**20:.0f} MiB of that is torch's own import"
        )
    print(f"importing the CLI, ingest and verify alone: {peak / 2**20:.0f} MiB ({torch_line})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds (>= 3); medians are printed"
    )
    parser.add_argument(
        "--hostile", action="store_true", help="peak memory on hostile input instead"
    )
    parser.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="ray: Ray executor against the local pool instead",
    )
    args = parser.parse_args()
    if args.rounds < 3 and not args.hostile:
        parser.error("--rounds: at least 3 (a median of fewer runs is one noisy run)")
    if args.hostile:
        with tempfile.TemporaryDirectory(prefix="inf590k-hostile-") as tmp:
            hostile(Path(tmp))
        return
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory(prefix="inf590k-bench-") as tmp:
        root = Path(tmp) / "frames"
        paths = make_corpus(root, args.count)
        if args.executor == "ray":
            ray_against_local(root, Path(tmp), args.workers, args.count, args.rounds)
            return
        runs = {
            "bare": lambda: bare_loop(paths),
            "single": lambda: ingest_rate(root, Path(tmp) / "b1", 1, args.count),
            "multi": lambda: ingest_rate(root, Path(tmp) / "bn", args.workers, args.count),
        }
        rounds = interleaved(runs, args.rounds)
    bare, single, multi = (
        median([r[name] for r in rounds]) for name in ("bare", "single", "multi")
    )
    single_ratio = median([r["single"] / r["bare"] for r in rounds])
    multi_ratio = median([r["multi"] / r["single"] for r in rounds])
    print(f"frames: {args.count} x 640x512 8-bit JPEG, median of {args.rounds} interleaved rounds")
    print(f"bare loop (imdecode + phash + sha256): {bare:8.1f} img/s")
    print(
        f"ingest, 1 worker:                      {single:8.1f} img/s   ratio {single_ratio:.2f}x bare (target >= 0.80)"
    )
    print(
        f"ingest, {args.workers} workers:                     {multi:8.1f} img/s   ratio {multi_ratio:.2f}x 1 worker (target >= {0.8 * args.workers:.2f})"
    )


if __name__ == "__main__":
    main()
