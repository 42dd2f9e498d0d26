"""What dedupe compares, read as columns: the fingerprints of the build's rows and of the
`--against` sets (another build, a dataset's sidecars, a folder of evaluation images).

No Python object per row: labels and digests stay Arrow strings, the 16-hex-digit pHash and
dHash are parsed from the column's bytes to uint64, and equal digests get equal codes (keyed
by their first 16 hex digits, checked whole where keys meet).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from inf590k.build import catalog as cat
from inf590k.build.dedupe.config import Fingerprints, OutsideSet
from inf590k.dataset.layout import read_sidecars
from inf590k.inputs.fingerprint import fingerprint
from inf590k.inputs.headers import RejectedImage
from inf590k.inputs.imageio import ImagePolicy, process_image_bytes

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".webp")
HEX_DIGITS = 16  # a 64-bit image hash as ingest writes it
PARSE_ROWS = 1 << 20  # hashes parsed at a time: bounds the [rows, 16] digit temporaries

# every byte -> its hex digit value; 255: not a hex digit
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_VALUE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_VALUE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def hex_codes(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Hex hash strings -> ([N] uint64 codes, [N] bool: a hash is there). Null or "" is code 0
    and no hash. A chunk of 16-digit hashes is parsed from its bytes; any other spelling
    (fewer digits, "0x", spaces) is read the way `int(h, 16)` reads it, and refused as it is."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parsed = [_chunk_codes(chunk) for chunk in chunks]
    if not parsed:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=bool)
    return np.concatenate([c for c, _ in parsed]), np.concatenate([h for _, h in parsed])


def _chunk_codes(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    if not (pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)):
        raise TypeError(f"expected hex strings, got a column of {chunk.type}")
    fast = _fixed_width_codes(chunk)
    if fast is not None:
        return fast
    values = chunk.to_pylist()  # a chunk of another spelling: rare, read as int() reads it
    codes = np.array([int(h, 16) if h else 0 for h in values], dtype=np.uint64)
    return codes, np.array([bool(h) for h in values], dtype=bool)


def _fixed_width_codes(chunk: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """The codes of a chunk whose hashes all have 16 hex digits (None: another spelling)."""
    found = _fixed_width(chunk, HEX_DIGITS)
    values = None if found is None else _hex_value(found[0])
    if values is None:
        return None
    codes = np.zeros(len(chunk), dtype=np.uint64)
    codes[found[1]] = values
    return codes, found[1]


def _fixed_width(chunk: pa.Array, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """([K, width] uint8: the bytes of the chunk's K non-empty values, a view of its buffer;
    [N] bool: which rows they are) when each is `width` bytes long (None: another length)."""
    offset_type = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    _, offsets_buffer, data_buffer = chunk.buffers()
    n = len(chunk)
    if offsets_buffer is None:  # a chunk of nothing but nulls
        return np.empty((0, width), dtype=np.uint8), np.zeros(n, dtype=bool)
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[chunk.offset : chunk.offset + n + 1]
    lengths = np.diff(offsets)  # [N]
    present = lengths > 0
    if chunk.null_count:
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        if lengths[~valid].any():  # a null that still spans bytes: read it the slow way
            return None
        present &= valid
    if not (lengths[present] == width).all():
        return None
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.empty(0, np.uint8)
    return data[offsets[0] : offsets[-1]].reshape(-1, width), present  # the values in order


def _hex_value(digits: np.ndarray) -> np.ndarray | None:
    """[K, 16] bytes of hex digits -> [K] uint64 (None: a byte that is not a hex digit)."""
    found = np.empty(len(digits), dtype=np.uint64)
    for start in range(0, len(digits), PARSE_ROWS):
        value = _HEX_VALUE[digits[start : start + PARSE_ROWS]]  # [k, 16] digit values
        if (value == 255).any():
            return None
        packed = (value[:, 0::2] << 4) | value[:, 1::2]  # [k, 8] bytes, most significant first
        found[start : start + len(packed)] = packed.view(">u8").ravel()
    return found


def digest_codes(digests: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """[N] int64: the same number for the same pixel sha256, -1 where there is none (null).
    No Python string per row: sha256 digests as ingest writes them (64 hex digits) are keyed
    by their first 16 digits, any other column goes through a dictionary encoding."""
    codes = _sha256_codes(digests)
    return codes if codes is not None else _dictionary_codes(digests)


SHA256_DIGITS = 64


def _sha256_codes(digests: pa.Array | pa.ChunkedArray) -> np.ndarray | None:
    """Codes of 64-hex-digit digests (None: another spelling): rows keyed by their first 16
    digits, the few rows that share a key told apart by the whole digest. Far less memory
    than a dictionary of every digest ([N] integers, no copy of the strings)."""
    chunks = digests.chunks if isinstance(digests, pa.ChunkedArray) else [digests]
    keys, present = [], []
    for chunk in chunks:
        strings = pa.types.is_string(chunk.type) or pa.types.is_large_string(chunk.type)
        found = _fixed_width(chunk, SHA256_DIGITS) if strings else None
        if found is None or found[1].sum() != len(chunk) - chunk.null_count:
            return None  # another length, or an empty digest (a value like any other)
        key = _hex_value(found[0][:, :HEX_DIGITS])
        if key is None:
            return None
        keys.append(key)
        present.append(found[1])
    if not chunks:
        return np.empty(0, dtype=np.int64)
    rows = np.flatnonzero(np.concatenate(present))  # [K] rows with a digest
    key = np.concatenate(keys)  # [K]
    del keys
    order = np.argsort(key, kind="stable")  # [K]
    ordered = key[order]
    del key
    group = np.cumsum(np.concatenate([[True], ordered[1:] != ordered[:-1]])) - 1  # [K] sorted
    del ordered
    rows = rows[order]  # [K], in key order
    del order
    codes = np.full(len(digests), -1, dtype=np.int64)
    codes[rows] = group
    count = np.bincount(group)
    shared = rows[count[group] > 1]  # rows whose key another row has: the whole digest decides
    if len(shared):
        codes[shared] = len(count) + _dictionary_codes(digests.take(pa.array(shared)))
    return codes


def _dictionary_codes(digests: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """[N] int64 dictionary indices of `digests` (-1 for null)."""
    encoded = pc.dictionary_encode(digests)  # chunks share one dictionary
    chunks = encoded.chunks if isinstance(encoded, pa.ChunkedArray) else [encoded]
    codes = np.concatenate(
        [pc.fill_null(c.indices, -1).to_numpy().astype(np.int64) for c in chunks]
        or [np.empty(0, dtype=np.int64)]
    )
    del encoded, chunks
    pa.default_memory_pool().release_unused()  # the dictionary and its hash table
    return codes


def fingerprints_of_rows(table: pa.Table) -> Fingerprints:
    """The fingerprints of catalog rows (uid, pixel_sha256, phash, dhash columns)."""
    phash, hashed = hex_codes(table.column("phash"))
    dhash, _ = hex_codes(table.column("dhash"))
    return Fingerprints(
        labels=table.column("uid"),
        digests=digest_codes(table.column("pixel_sha256")),
        phash=phash,
        dhash=dhash,
        hashed=hashed,
    )


def _outside_of_rows(table: pa.Table, reason: str, skipped: int = 0) -> OutsideSet:
    table = table.select(["uid", "pixel_sha256", "phash", "dhash"])
    return OutsideSet(fingerprints_of_rows(table), table.column("pixel_sha256"), reason, skipped)


def _fingerprints_of_folder(folder: Path) -> tuple[pa.Table, int]:
    """Hash evaluation images the way ingest hashes (same decode, crop and 8-bit view)."""
    policy = ImagePolicy(allow_colour=True)  # benchmark images may be stored as RGB
    labels, digests, phashes, dhashes, skipped = [], [], [], [], 0
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        try:
            found = fingerprint(process_image_bytes(path.read_bytes(), policy).view8)
        except (RejectedImage, OSError, ValueError):
            skipped += 1
            continue
        labels.append(path.relative_to(folder).as_posix())
        digests.append(found.pixel_sha256)
        phashes.append(found.phash)
        dhashes.append(found.dhash)
    columns = {"uid": labels, "pixel_sha256": digests, "phash": phashes, "dhash": dhashes}
    return pa.table({k: pa.array(v, type=pa.string()) for k, v in columns.items()}), skipped


# what dedupe reads of a catalog (the feature model alone reads whole rows)
FINGERPRINT_COLUMNS = ("status", "pixel_sha256", "phash", "dhash")


def _ok_rows(table: pa.Table) -> pa.Table:
    return table.filter(pc.fill_null(pc.equal(table.column("status"), cat.STATUS_OK), False))


def load_outside_set(path: Path) -> OutsideSet:
    """A build folder (its catalog), a built dataset (its shard sidecars) or an image folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"--against {path}: no such file or folder")
    if cat.part_paths(path):
        rows = _ok_rows(cat.read_catalog(path, columns=FINGERPRINT_COLUMNS))
        return _outside_of_rows(rows, f"already in {path.name or path}")
    if (path / "data" / "_info.json").is_file():  # a dataset folder: its shards' sidecar rows
        return _outside_of_rows(read_sidecars(path), f"already in {path.name or path}")
    if path.is_dir():
        rows, skipped = _fingerprints_of_folder(path)
        if not len(rows):
            raise ValueError(f"--against {path}: no readable images, shard sidecars or catalog")
        return _outside_of_rows(rows, f"decontamination: matches {path.name or path}", skipped)
    raise ValueError(f"--against {path}: expected a build folder, a dataset or an image folder")
