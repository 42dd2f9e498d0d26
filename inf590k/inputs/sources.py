"""Read a source root in place: a folder, a .zip, or a .tar / .tar.gz / .tgz / .tar.bz2 / .tar.xz.

Archives are never extracted: members are read as bytes. Every entry found gets a
`SourceEntry`, including the ones that cannot be read (their `problem` says why), so the
catalog accounts for every file.
"""

from __future__ import annotations

import errno
import io
import lzma
import os
import posixpath
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from inf590k.fsutil import plural
from inf590k.inputs.zip_recovery import (
    open_zip,
    recover_zip,
)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# What the standard library raises on a damaged archive (cut short, bad CRC, corrupt stream).
ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
)
DAMAGED_INDEX = "[archive index]"  # relpath of the row that stands for an unreadable archive part
NOT_UTF8 = "file name is not valid UTF-8 (rename it)"  # such a name is shown escaped


class DamagedMember(OSError):
    """An archive member that cannot be read back (bad CRC, cut off); the message is the reason."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "damaged archive member"


def damage_reason(err: BaseException) -> str:
    """One line for the catalog (tarfile's open error lists every method it tried)."""
    text = " ".join(str(err).split()) or type(err).__name__
    if "could not be opened successfully" in text:
        return "it cannot be opened: cut short, or not a tar archive"
    return text[:200]


@dataclass(frozen=True)
class SourceEntry:
    relpath: str  # posix path inside the root or archive
    size: int
    problem: str = ""  # non-empty: the entry cannot be read, and why
    mtime: int = 0  # modification time (ns for folders, s for archive members): resume checks
    occurrence: int = 0  # > 0: a later archive member with the same name (its own row)
    order: int = 0  # position in the archive (tar members are read in this order)
    offset: int = -1  # where the data starts in an uncompressed tar (read in place), else -1


def root_kind(root: Path) -> str:
    """'folder', 'zip' or 'tar'; raises FileNotFoundError / ValueError with what to do."""
    root = Path(root)
    if root.is_dir():
        return "folder"
    if not root.exists():
        raise FileNotFoundError(f"source path {root} does not exist: pass a folder or an archive")
    if not stat.S_ISREG(root.stat().st_mode):  # a FIFO or a device would block or never end
        raise ValueError(
            f"source path {root} is not a regular file or folder: pass a folder or an archive"
        )
    name = root.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    raise ValueError(f"{root} is neither a folder nor a .zip/.tar(.gz/.bz2/.xz) archive")


def unsafe_member_path(name: str) -> str:
    """Why an archive member name must not be used ('' when it is safe)."""
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "unsafe archive member: absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "unsafe archive member: '..' in path"
    return ""


def _walk_folder(root: Path, start: str = "") -> Iterator[SourceEntry]:
    """Every file under `root/start` (all of `root` by default), relpaths from `root`."""

    def on_error(err: OSError) -> None:  # an unreadable folder still gets a row
        rel = os.path.relpath(err.filename, root).replace(os.sep, "/")
        if rel != ".":
            pending.append(SourceEntry(rel, 0, _unreadable_folder(err)))

    pending: list[SourceEntry] = []
    top = os.path.join(root, start) if start else root
    for dirpath, dirnames, filenames in os.walk(top, onerror=on_error):
        yield from pending
        pending.clear()
        for dirname in list(dirnames):
            full = os.path.join(dirpath, dirname)
            if os.path.islink(full):
                dirnames.remove(dirname)  # a linked folder could loop; give it a row instead
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                yield SourceEntry(rel, 0, LINKED_FOLDER)
        folder = os.path.relpath(dirpath, root).replace(os.sep, "/")  # once per folder
        prefix = "" if folder == "." else folder + "/"
        for filename in filenames:
            yield _folder_entry(os.path.join(dirpath, filename), prefix + filename)
    yield from pending


LINKED_FOLDER = "symbolic link to a folder (not followed)"


def _unreadable_folder(err: OSError) -> str:
    return f"unreadable folder ({err.strerror})"


# ----------------------------------------------------------------------------- listing in parts
#
# A large folder is listed by several workers: the driver reads the names of the first levels
# of folders (no stat), and cuts them into listing units in path order: a whole subtree, or a
# run of a folder's own files. Each unit's entries come back sorted, so the units' results
# joined in unit order are `list_entries`'s order: a subtree's paths all start with "name/",
# which sorts against any sibling name exactly as "name/" does.

LISTING_FILES = 4096  # names of one folder per listing unit
LISTING_DEPTH = 3  # folder levels the driver reads to cut units (names only)


@dataclass(frozen=True)
class ListingUnit:
    """Part of a folder source's listing: the tree under `subtree`, or `items` (relpaths of
    files to stat, or entries the driver already knows: links to folders, unreadable ones)."""

    subtree: str | None = None
    items: tuple[str | SourceEntry, ...] = ()


def listing_units(root: Path, wanted: int, files: int = 0) -> list[ListingUnit]:
    """Units in path order: folders are opened level by level (breadth first, at most
    `LISTING_DEPTH`) while there are fewer than `wanted` units; at most `files` (default
    `LISTING_FILES`) files a unit."""
    files = files or LISTING_FILES
    units = _folder_units(Path(root), "", files)
    for _ in range(LISTING_DEPTH - 1):
        if len(units) >= wanted or not any(u.subtree is not None for u in units):
            break
        units = [
            part
            for unit in units
            for part in (_folder_units(Path(root), unit.subtree, files) if unit.subtree is not None else [unit])
        ]
    return _joined(units, files)


def _folder_units(root: Path, folder: str, files: int) -> list[ListingUnit]:
    """One folder's files (runs of `files`) and each subfolder as a subtree, in path order;
    what `os.walk` would make of each name (a link to a folder, an unreadable folder)."""
    prefix = f"{folder}/" if folder else ""
    keys: list[str] = []  # a file's relpath; a folder's with "/" (it sorts as its paths do)
    links: set[str] = set()  # links to folders: a row each, not followed
    try:
        with os.scandir(os.path.join(root, folder) if folder else root) as scan:
            for entry in scan:  # one string a name: a flat folder of millions is listed here
                rel = prefix + entry.name
                try:
                    is_dir = entry.is_dir()  # as os.walk: a link to a folder counts, then gets its row
                except OSError:
                    is_dir = False
                if is_dir and not entry.is_symlink():
                    rel += "/"
                elif is_dir:
                    links.add(rel)
                keys.append(rel)
    except OSError as err:
        return [ListingUnit(items=(SourceEntry(folder, 0, _unreadable_folder(err)),))] if folder else []
    keys.sort()
    units: list[ListingUnit] = []
    run: list[str | SourceEntry] = []
    for key in keys:
        if key.endswith("/"):
            if run:
                units.append(ListingUnit(items=tuple(run)))
                run = []
            units.append(ListingUnit(subtree=key[:-1]))
            continue
        run.append(SourceEntry(key, 0, LINKED_FOLDER) if links and key in links else key)
        if len(run) == files:
            units.append(ListingUnit(items=tuple(run)))
            run = []
    if run:
        units.append(ListingUnit(items=tuple(run)))
    return units


def _joined(units: list[ListingUnit], files: int) -> list[ListingUnit]:
    """Neighbouring runs of files (from different folders) as one unit, up to `files`."""
    out: list[ListingUnit] = []
    run: list[str | SourceEntry] = []
    for unit in units:
        if unit.subtree is None and len(run) + len(unit.items) <= files:
            run.extend(unit.items)
            continue
        if run:
            out.append(ListingUnit(items=tuple(run)))
        run = []
        if unit.subtree is None:
            run = list(unit.items)
        else:
            out.append(unit)
    if run:
        out.append(ListingUnit(items=tuple(run)))
    return out


def list_unit(root: Path, unit: ListingUnit) -> list[SourceEntry]:
    """A unit's entries, sorted by path, unreadable ones flagged (as `list_entries`)."""
    if unit.subtree is not None:
        entries = sorted(_walk_folder(Path(root), unit.subtree), key=lambda entry: entry.relpath)
    else:  # items come sorted
        entries = [
            item if isinstance(item, SourceEntry) else _folder_entry(os.path.join(root, item), item)
            for item in unit.items
        ]
    return flag_name_problems(entries)


def _folder_entry(full: str, rel: str) -> SourceEntry:
    try:
        info = os.stat(full)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return SourceEntry(rel, 0, "symbolic link loop")
        if os.path.islink(full):
            return SourceEntry(rel, 0, "broken symbolic link")
        return SourceEntry(rel, 0, f"unreadable ({err.strerror})")
    if not stat.S_ISREG(info.st_mode):
        return SourceEntry(rel, 0, "not a regular file")
    if not os.access(full, os.R_OK):
        return SourceEntry(rel, info.st_size, "unreadable (permission denied)", info.st_mtime_ns)
    return SourceEntry(rel, info.st_size, mtime=info.st_mtime_ns)


def _list_zip(root: Path) -> Iterator[SourceEntry]:
    try:
        archive = zipfile.ZipFile(root)
    except ARCHIVE_ERRORS as err:  # cut before its central directory, or not a zip at all
        try:
            yield from _list_recovered_zip(root, damage_reason(err))
        except OSError as unreadable:
            problem = f"damaged archive: the zip cannot be read ({damage_reason(unreadable)}); re-download it"
            yield SourceEntry(DAMAGED_INDEX, 0, problem)
        return
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            problem = unsafe_member_path(info.filename)
            if not problem and info.flag_bits & 0x1:
                problem = "encrypted archive member"
            stamp = int("".join(f"{part:02d}" for part in info.date_time))
            # Zips made on Windows may use backslashes: match manifests on the posix form.
            yield SourceEntry(info.filename.replace("\\", "/"), info.file_size, problem, stamp)


def _tar_member_problem(member: tarfile.TarInfo) -> str:
    problem = unsafe_member_path(member.name)
    if problem:
        return problem
    if member.issym() or member.islnk():
        return "link inside archive (not followed)"
    if not member.isfile():
        return "not a regular file"
    return ""


def _check_tar_end(archive: tarfile.TarFile, root: Path) -> None:
    """An uncompressed tar cut at a member boundary reads as complete: tarfile stops at the
    end of the file quietly. A whole one ends with two zero blocks after its last member."""
    end = archive.offset + 2 * tarfile.BLOCKSIZE
    if isinstance(archive.fileobj, io.BufferedReader) and end > root.stat().st_size:
        raise tarfile.ReadError("cut short: no end-of-archive marker")


def _list_tar(root: Path) -> Iterator[SourceEntry]:
    """Members in archive order; a damaged stream ends the listing with one row that says so."""
    last = ""
    try:
        with tarfile.open(root, mode="r:*") as archive:
            plain = isinstance(archive.fileobj, io.BufferedReader)
            for member in archive:
                if member.isdir():
                    continue
                last = member.name
                offset = member.offset_data if plain and member.isfile() else -1
                problem = _tar_member_problem(member)
                yield SourceEntry(
                    member.name, member.size, problem, int(member.mtime), offset=offset
                )
            _check_tar_end(archive, root)
    except ARCHIVE_ERRORS as err:
        where = f"after member {last}" if last else "before its first member"
        problem = (
            f"damaged archive ({damage_reason(err)}) {where}: any members after it are lost; "
            "re-download the archive"
        )
        yield SourceEntry(DAMAGED_INDEX, 0, problem)


def list_entries(root: Path) -> list[SourceEntry]:
    """Every file under a root (folder or archive), sorted by path; unreadable ones flagged."""
    kind = root_kind(root)
    if kind == "folder":
        entries = _walk_folder(Path(root))
    elif kind == "zip":
        entries = _list_zip(Path(root))
    else:
        entries = _list_tar(Path(root))
    in_order = [replace(entry, order=index) for index, entry in enumerate(entries)]
    return flag_name_problems(sorted(in_order, key=lambda entry: (entry.relpath, entry.order)))


def flag_name_problems(entries: list[SourceEntry]) -> list[SourceEntry]:
    """Names that cannot be used as they are keep a row, with the reason.

    Non-UTF-8 names (surrogate escapes from the file system or a tar) become readable text;
    a member name an archive holds twice gets its own row (occurrence 1, 2, ...), since only
    one copy can be read back by name.
    """
    flagged: list[SourceEntry] = []
    seen: dict[str, int] = {}
    for entry in entries:
        try:
            entry.relpath.encode("utf-8")
        except UnicodeEncodeError:
            text = entry.relpath.encode("utf-8", "surrogateescape").decode(
                "utf-8", "backslashreplace"
            )
            entry = replace(entry, relpath=text, problem=NOT_UTF8)
        count = seen.get(entry.relpath, 0)
        seen[entry.relpath] = count + 1
        if count:
            entry = replace(
                entry,
                occurrence=count,
                problem="duplicate member name in the archive (only one copy can be read)",
            )
        flagged.append(entry)
    return flagged


# ----------------------------------------------------------------------------- a zip without its index
#
# A .zip cut short (or with a damaged end) has lost its central directory, the index zipfile
# reads; every member before the damage still has its own local header. As `zip -FF` does,
# the local headers are read one after another, and an index is rebuilt from them in memory
# so that zipfile itself reads the members (decompression, CRC checks, zip64). The scan is
# hand-written because zipfile has no reader for local headers (and reading the archive as a
# stream instead would re-read it from the start for every member asked for).


def _list_recovered_zip(root: Path, reason: str) -> Iterator[SourceEntry]:
    """Every member whose local header survives (a cut one with its reason), then one row
    that says what is damaged and what is lost."""
    recovery = recover_zip(root)
    for member in recovery.members:
        if member.name.endswith("/"):
            continue
        problem = member.problem or unsafe_member_path(member.name)
        if not problem and member.flags & 0x1:
            problem = "encrypted archive member"
        yield SourceEntry(member.name.replace("\\", "/"), member.size, problem, member.stamp)
    read = sum(not member.problem for member in recovery.members)
    problem = (
        f"damaged archive: the zip index (central directory) cannot be read ({reason}); "
        f"{plural(read, 'member')} read from their own headers, as zip -FF does{recovery.lost}; "
        "re-download the archive or repair it (zip -FF)"
    )
    yield SourceEntry(DAMAGED_INDEX, root.stat().st_size, problem)


class SourceReader:
    """Reads file bytes from a root; archives stay open for the reader's lifetime.

    `read_many` returns members in one forward pass for compressed tars (random access into a
    .tar.gz re-decompresses from the start).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.kind = root_kind(self.root)
        self._zip: zipfile.ZipFile | None = None
        self._zip_names: dict[str, str] = {}  # posix relpath -> member name as stored

    def __enter__(self) -> SourceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def read(self, relpath: str) -> bytes:
        return self.read_many([relpath])[relpath]

    def read_many(self, relpaths: Iterable[str]) -> dict[str, bytes]:
        """Bytes of each file; DamagedMember for a member that cannot be read back."""
        wanted = list(dict.fromkeys(relpaths))
        for relpath in wanted:
            problem = unsafe_member_path(relpath)
            if problem:
                raise ValueError(f"{relpath}: {problem}")
        if self.kind == "folder":
            return {rel: (self.root / rel).read_bytes() for rel in wanted}
        if self.kind == "zip":
            return {rel: self._read_zip_member(rel) for rel in wanted}
        found = {}
        for name, payload in self._iter_tar(set(wanted)):
            if isinstance(payload, BaseException):
                raise payload
            found[name] = payload
        return found

    def read_at(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` of an uncompressed tar: one member, read in place."""
        with open(self.root, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise DamagedMember(f"damaged archive member (cut off: {len(data)} of {size} bytes)")
        return data

    def _read_zip_member(self, relpath: str) -> bytes:
        try:
            if self._zip is None:
                self._zip = open_zip(self.root)
                self._zip_names = {name.replace("\\", "/"): name for name in self._zip.namelist()}
            return self._zip.read(self._zip_names.get(relpath, relpath))
        except ARCHIVE_ERRORS as err:
            raise DamagedMember(f"damaged archive member ({damage_reason(err)})") from err
        except NotImplementedError as err:  # a compression method or feature zipfile lacks
            raise DamagedMember(f"unsupported archive member ({err})") from err

    def _iter_tar(self, wanted: set[str]) -> Iterator[tuple[str, bytes | DamagedMember]]:
        """(name, bytes) of the wanted members in archive order, one pass; (name,
        DamagedMember) for a member whose data is cut or corrupt, and for every wanted member
        the pass never reached because the archive is damaged before it."""
        wanted = set(wanted)
        try:
            with tarfile.open(self.root, mode="r:*") as archive:
                for member in archive:
                    if member.name not in wanted or not member.isfile():
                        continue
                    wanted.discard(member.name)
                    yield member.name, _read_tar_member(archive, member)
                    if not wanted:
                        return
        except ARCHIVE_ERRORS as err:
            reason = f"damaged archive before this member ({damage_reason(err)})"
            for name in sorted(wanted):
                yield name, DamagedMember(reason)
            return
        if wanted:
            raise FileNotFoundError(f"{self.root}: no member {sorted(wanted)[0]}")

    def iter_tar_bytes(self, wanted: set[str]) -> Iterator[tuple[str, bytes | DamagedMember]]:
        """Stream the requested members of a tar archive in archive order (one pass)."""
        return self._iter_tar(set(wanted))


def _read_tar_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | DamagedMember:
    try:
        handle = archive.extractfile(member)
        data = handle.read() if handle is not None else b""
    except ARCHIVE_ERRORS as err:
        return DamagedMember(f"damaged archive member ({damage_reason(err)})")
    if len(data) != member.size:
        return DamagedMember(
            f"damaged archive member (cut off: {len(data)} of {member.size} bytes)"
        )
    return data


def member_suffix(relpath: str) -> str:
    return posixpath.splitext(relpath)[1].lower()
