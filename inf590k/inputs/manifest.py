"""Source manifests: what a public infrared dataset looks like on disk, and what to keep of it.

One YAML file per source under `manifests/` (schema: `Manifest` below, documented in
manifests/README.md). Paths are matched case-insensitively against the path of each file
relative to the source root (or archive), because copies of the same dataset differ in case
(`Ir/` vs `ir/`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

MANIFEST_DIR = Path(__file__).resolve().parents[2] / "manifests"
MODALITIES = ("lwir", "mwir", "nir", "synthetic")
CHANNEL_POLICIES = ("grey", "allow_colour")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")
ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_]*$")

# Written at the root of every synth tree: ingest labels its frames modality `synthetic`, with
# the license and citation below instead of those of the imitated source.
SYNTH_MARKER = "INF590K_SYNTHETIC.json"
SYNTH_LICENSE = "Apache-2.0 (synthetic frames rendered by the Inf-590K toolkit)"
SYNTH_CITATION = "Synthetic infrared frames rendered by `inf590k synth` (Inf-590K toolkit)"

# Folders and files that hold the visible half of a pair, masks or labels. Applied to the
# generic `folder` source, and available to manifests as `exclude: [standard]`.
STANDARD_EXCLUDES: tuple[tuple[str, str], ...] = (
    ("visible image folder", "**/{visible,vis,vi,rgb,color,colour,images_rgb_*,*_visible,video_rgb_*}/**"),
    ("visible image file (*_co)", "**/*_co.*"),
    ("mask folder", "**/{mask,masks,gt,groundtruth,segmentation_labels,seg_labels}/**"),
    ("mask file (*_pixels0)", "**/*_pixels0.*"),
    ("label folder", "**/{label,labels,annotation,annotations,annotated_thermal_8_bit}/**"),
)


NOT_YAML_KEYS = ("path", "folder_source")  # Manifest fields a manifest file cannot set
# Fields no catalog row depends on: left out of a source's signature, so a change to them (or
# their arrival in a newer toolkit) does not redo the source's finished chunks.
NOT_SIGNED = ("path", "folder_source", "license_link")

# A folder source describes itself in a small file at its root (or on the command line:
# --source-name/--source-license/--source-citation ID=TEXT, which win over the file).
FOLDER_FACTS_FILES = ("inf590k-source.yaml", "inf590k-source.yml", "inf590k-source.json")
FOLDER_FACT_KEYS = ("name", "license", "citation", "homepage", "license_link")
FOLDER_FACTS_MAX_BYTES = 64 << 10


class ManifestError(ValueError):
    """A manifest file that does not follow the schema; the message names file, key and fix."""


@dataclass(frozen=True)
class ExcludeRule:
    rule: str  # human-readable name: becomes the catalog `reason` of excluded files
    glob: str


@dataclass(frozen=True)
class BorderRule:
    """A fixed frame to cut off every image of a source (e.g. DroneVehicle's white border)."""

    width: int  # pixels cut from each side
    value: int | None = None  # the frame's grey level, when known (documentation and checks)


@dataclass(frozen=True)
class Manifest:
    id: str
    name: str
    homepage: str = ""
    license: str = "unknown"
    citation: str = ""
    modality: str = "lwir"
    paired_with_visible: bool = False
    include: tuple[str, ...] = ("**/*",)
    exclude: tuple[ExcludeRule, ...] = ()
    expected_count: int | None = None
    video_stride: int = 1  # keep every k-th frame of a video file or frame-sequence folder
    sequence_globs: tuple[str, ...] = ()  # folders whose images are consecutive video frames
    border: BorderRule | None = None
    crop_zero_borders: bool = True
    channel_policy: str = "grey"
    tags: tuple[str, ...] = ()
    notes: str = ""
    license_link: str = ""  # a URL of the licence text, where the licence's name has none
    path: str = ""  # the YAML file it came from
    folder_source: bool = False  # `folder` / `folder:NAME`: the built-in rules, not a YAML file

    def excluded_by(self, relpath: str) -> str | None:
        """Name of the first exclude rule matching `relpath`, or None."""
        for rule in self.exclude:
            if glob_matches(rule.glob, relpath):
                return rule.rule
        return None

    def included(self, relpath: str) -> bool:
        return any(glob_matches(pattern, relpath) for pattern in self.include)

    def in_sequence(self, relpath: str) -> bool:
        return any(glob_matches(pattern, relpath) for pattern in self.sequence_globs)


@functools.lru_cache(maxsize=512)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a glob with `**`, `*`, `?`, `[...]` and `{a,b}` to a case-insensitive regex.

    Hand-written because fnmatch has neither `**` nor braces, and pathlib's full_match is
    Python 3.13+ and case-sensitive on POSIX.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    depth = 0  # inside {...}
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = end
        elif c == "{":
            out.append("(?:")
            depth += 1
        elif c == "}" and depth:
            out.append(")")
            depth -= 1
        elif c == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.IGNORECASE | re.DOTALL)


def glob_matches(pattern: str, relpath: str) -> bool:
    return _glob_regex(pattern).match(relpath) is not None


def _fail(path: str, key: str, problem: str, fix: str) -> ManifestError:
    return ManifestError(f"{path}: key '{key}': {problem}. Fix: {fix}")


def _check_globs(patterns: tuple[str, ...], path: str, key: str) -> tuple[str, ...]:
    for pattern in patterns:
        try:
            _glob_regex(pattern)
        except re.error as err:
            raise _fail(
                path, key, f"glob {pattern!r} is not valid ({err.msg})",
                "ranges in [...] go low to high ([a-z]), and every { needs its }",
            ) from None
    return patterns


def _parse_excludes(raw: Any, path: str) -> tuple[ExcludeRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail(path, "exclude", "must be a list", "write `exclude: [{rule: NAME, glob: PATTERN}]`")
    rules: list[ExcludeRule] = []
    for item in raw:
        if item == "standard":
            rules.extend(ExcludeRule(name, pattern) for name, pattern in STANDARD_EXCLUDES)
            continue
        if not isinstance(item, dict) or set(item) != {"rule", "glob"}:
            raise _fail(
                path, "exclude", f"entry {item!r} is not {{rule, glob}}",
                "each entry needs exactly `rule:` (a name) and `glob:` (a pattern), or the word standard",
            )
        _check_globs((str(item["glob"]),), path, "exclude")
        rules.append(ExcludeRule(str(item["rule"]), str(item["glob"])))
    return tuple(rules)


def _parse_border(raw: Any, path: str) -> BorderRule | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("width"), int) or raw["width"] < 0:
        raise _fail(path, "border", f"{raw!r} is not a border rule", "write `border: {width: 100, value: 255}`")
    return BorderRule(width=raw["width"], value=raw.get("value"))


def _as_str_tuple(raw: Any, path: str, key: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (raw,)
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise _fail(path, key, f"{raw!r} is not a list of strings", f"write `{key}: [\"pattern\", ...]`")
    return tuple(raw)


def manifest_from_dict(data: Any, path: str = "<manifest>") -> Manifest:
    """Validate a parsed YAML mapping into a Manifest; errors name the file, key and fix."""
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: a manifest must be a YAML mapping of keys (id, name, include, ...)")
    known = {f.name for f in fields(Manifest)} - set(NOT_YAML_KEYS)
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(path, unknown[0], "is not a manifest key", f"use one of: {', '.join(sorted(known))}")
    for key in ("id", "name"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise _fail(path, key, "is missing", f"add `{key}: ...` (a non-empty string)")
    if not ID_PATTERN.match(data["id"]):
        raise _fail(path, "id", f"{data['id']!r} is not a valid id", "use lower-case letters, digits and _")
    modality = data.get("modality", "lwir")
    if modality not in MODALITIES:
        raise _fail(path, "modality", f"{modality!r} is unknown", f"use one of {', '.join(MODALITIES)}")
    policy = data.get("channel_policy", "grey")
    if policy not in CHANNEL_POLICIES:
        raise _fail(path, "channel_policy", f"{policy!r} is unknown", f"use one of {', '.join(CHANNEL_POLICIES)}")
    stride = data.get("video_stride", 1)
    if not isinstance(stride, int) or stride < 1:
        raise _fail(path, "video_stride", f"{stride!r} is not a positive integer", "write e.g. `video_stride: 10`")
    expected = data.get("expected_count")
    if expected is not None and (not isinstance(expected, int) or expected < 0):
        raise _fail(path, "expected_count", f"{expected!r} is not a count", "write a number or `null`")
    include = _check_globs(_as_str_tuple(data.get("include", ["**/*"]), path, "include"), path, "include")
    if not include:
        raise _fail(path, "include", "is empty", "list at least one glob, e.g. `include: [\"**/*.png\"]`")
    return Manifest(
        id=data["id"],
        name=data["name"],
        homepage=str(data.get("homepage") or ""),
        license=str(data.get("license") or "unknown"),
        citation=str(data.get("citation") or ""),
        modality=modality,
        paired_with_visible=bool(data.get("paired_with_visible", False)),
        include=include,
        exclude=_parse_excludes(data.get("exclude"), path),
        expected_count=expected,
        video_stride=stride,
        sequence_globs=_check_globs(
            _as_str_tuple(data.get("sequence_globs"), path, "sequence_globs"), path, "sequence_globs"
        ),
        border=_parse_border(data.get("border"), path),
        crop_zero_borders=bool(data.get("crop_zero_borders", True)),
        channel_policy=policy,
        tags=_as_str_tuple(data.get("tags"), path, "tags"),
        notes=str(data.get("notes") or ""),
        license_link=str(data.get("license_link") or ""),
        path=path,
    )


def load_manifest_file(path: Path) -> Manifest:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ManifestError(f"{path}: not valid YAML{where} ({problem}). Fix the syntax there") from None
    except OSError as err:
        raise ManifestError(f"{path}: cannot read the manifest ({err.strerror})") from err
    return manifest_from_dict(data, str(path))


FOLDER_SOURCE_NAME = "Self-collected folder"  # `folder` and every `folder:NAME` source
FOLDER_LICENSE = "user-provided"  # a folder source's licence until its facts say one


def is_folder_source(name: str) -> bool:
    """Whether a source, by its default (or recorded) name, is `folder` or `folder:NAME`."""
    return name.startswith(FOLDER_SOURCE_NAME)


def source_option(source_id: str, recorded: Mapping[str, Any] | str, root: str) -> str:
    """The `--source` value that ingests a recorded source again (`folder:NAME=` for folders).

    `recorded`: the build's record of the source (or its name, as earlier builds kept it)."""
    if isinstance(recorded, str):
        folder = is_folder_source(recorded)
    else:
        folder = bool(recorded.get("folder_source")) or is_folder_source(recorded.get("name", ""))
    if folder and source_id != "folder":
        return f"folder:{source_id}={root}"
    return f"{source_id}={root}"


def folder_manifest() -> Manifest:
    """The built-in `folder` source: every image under the root, standard exclusions."""
    return Manifest(
        id="folder",
        name=FOLDER_SOURCE_NAME,
        license=FOLDER_LICENSE,
        include=tuple(f"**/*{ext}" for ext in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS),
        exclude=tuple(ExcludeRule(name, pattern) for name, pattern in STANDARD_EXCLUDES),
        notes="Any folder of infrared images; visible halves, masks and labels are excluded.",
        folder_source=True,
    )


def folder_source_id(source_id: str) -> str:
    """The id of `--source folder:NAME=...`: NAME with `-` as `_` (ids join file names with `-`)."""
    return source_id.split(":", 1)[1].replace("-", "_") if source_id.startswith("folder:") else source_id


def renamed_folder_note(source_id: str) -> str:
    """A one-line note when `folder:NAME` gets another id than NAME ('' when it keeps it)."""
    if not source_id.startswith("folder:"):
        return ""
    name, final = source_id.split(":", 1)[1], folder_source_id(source_id)
    if name == final:
        return ""
    return (
        f"note: source {source_id} is named {final!r} (ids use _ where NAME has -: shard and "
        "file names join parts with -)"
    )


def check_folder_facts(data: Any, where: str) -> dict[str, str]:
    """A folder source's facts: a mapping of FOLDER_FACT_KEYS to non-empty one-line strings
    (a citation may span lines)."""
    if not isinstance(data, dict):
        raise ManifestError(
            f"{where}: must be a mapping, e.g. `name: VIFB` and `license: CC-BY-4.0`. "
            f"Fix: use the keys {', '.join(FOLDER_FACT_KEYS)}"
        )
    facts = {}
    for key, value in data.items():
        if key not in FOLDER_FACT_KEYS:
            raise _fail(where, str(key), "is not a key of a folder source", f"use one of: {', '.join(FOLDER_FACT_KEYS)}")
        if not isinstance(value, str) or not value.strip():
            raise _fail(where, key, f"{value!r} is not text", f"write `{key}: ...` as a non-empty string")
        if key != "citation" and "\n" in value.strip():
            raise _fail(where, key, "spans several lines", "write it on one line")
        facts[key] = " ".join(value.split()) if key != "citation" else value.strip()
    return facts


def read_folder_facts(root: Path) -> tuple[dict[str, str], str]:
    """The facts in a folder source's description file at its root, and the file's name
    ({} and "" without one, or when the source is an archive). YAML or JSON; a link is not
    followed, a file over 64 KiB is refused."""
    root = Path(root)
    if not root.is_dir():  # an archive: the command line describes it
        return {}, ""
    for filename in FOLDER_FACTS_FILES:
        path = root / filename
        if path.is_symlink():
            raise ManifestError(f"{path}: a symbolic link; write the file itself there")
        if not path.is_file():
            continue
        if path.stat().st_size > FOLDER_FACTS_MAX_BYTES:
            raise ManifestError(f"{path}: over 64 KiB; a folder source's description is a few lines")
        try:
            data = yaml.safe_load(path.read_text())  # JSON is YAML
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ManifestError(f"{path}: not valid YAML or JSON ({str(err).splitlines()[0]}). Fix the syntax there") from None
        return check_folder_facts(data, str(path)), filename
    return {}, ""


def with_folder_facts(manifest: Manifest, facts: Mapping[str, str], filename: str = "") -> Manifest:
    """A folder source's manifest with its own name, licence, citation and links; its
    description file (`filename`) gets an excluded row saying what it is."""
    changes: dict[str, Any] = dict(facts)
    if filename:
        rule = ExcludeRule(f"folder source description ({filename})", filename)
        changes["exclude"] = (rule, *manifest.exclude)
    return replace(manifest, **changes)


def builtin_manifests(directory: Path = MANIFEST_DIR) -> dict[str, Manifest]:
    """All manifests shipped in manifests/, plus the built-in `folder` source, by id."""
    return dict(_load_manifest_dir(Path(directory)))


@functools.lru_cache(maxsize=4)
def _load_manifest_dir(directory: Path) -> tuple[tuple[str, Manifest], ...]:
    manifests = {"folder": folder_manifest()}
    for path in sorted(Path(directory).glob("*.yaml")):
        manifest = load_manifest_file(path)
        if manifest.id in manifests:
            raise ManifestError(f"{path}: key 'id': {manifest.id!r} is used twice. Fix: rename one")
        manifests[manifest.id] = manifest
    return tuple(manifests.items())


def resolve_manifests(extra_files: tuple[Path, ...] = ()) -> dict[str, Manifest]:
    """Built-in manifests, with user manifests (`--manifest FILE`) added or overriding by id."""
    manifests = builtin_manifests()
    for path in extra_files:
        manifest = load_manifest_file(path)
        manifests[manifest.id] = manifest
    return manifests


def manifest_for_source(source_id: str, manifests: dict[str, Manifest]) -> Manifest:
    """The manifest of `--source ID=PATH`; `folder:NAME` is a folder source with its own id."""
    if source_id.startswith("folder:"):
        name = folder_source_id(source_id)
        if not ID_PATTERN.match(name):
            raise ManifestError(
                f"source {source_id!r}: NAME must use lower-case letters, digits, - and _"
            )
        if name in manifests:
            raise ManifestError(
                f"source {source_id!r}: {name!r} is already a manifest id: use `--source {name}=PATH` "
                f"to ingest it with that manifest, or another NAME, e.g. folder:{name}_own=PATH"
            )
        return replace(folder_manifest(), id=name, name=f"{FOLDER_SOURCE_NAME} {name}")
    if source_id not in manifests:
        raise ManifestError(
            f"unknown source id {source_id!r}: see `inf590k sources list`, use folder=PATH or "
            "folder:NAME=PATH for your own images, or pass --manifest FILE"
        )
    return manifests[source_id]


@dataclass(frozen=True)
class SourceIndex:
    """Stable integer per source id (the shards' `.cls`): sorted built-in ids, then the rest."""

    ids: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def for_ids(cls, used: set[str] | list[str]) -> SourceIndex:
        builtin = sorted(builtin_manifests())
        extra = sorted(set(used) - set(builtin))
        return cls(tuple(builtin + extra))

    def index(self, source_id: str) -> int:
        return self.ids.index(source_id)
