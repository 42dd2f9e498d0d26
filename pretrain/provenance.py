"""What a run trained on, as its records name it, and the licence its weights inherit.

    record = data_record(["https://huggingface.co/datasets/lab/inf590k/resolve/main/..."], ...)
    record.name      # "lab/inf590k" (a Hub repo id), a shard pattern as given, or --data-name
    weights_licence(record.sources)  # non-commercial sources -> non-commercial weights

Records never hold a loopback URL (a throw-away local server means nothing to a reader), and
the weights' licence is derived from the licences of the sources listed in the dataset's
`_info.json` ("sources"); where a source's licence is not known, the weights' is not either.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pretrain.config import PretrainConfig
from pretrain.data import ResolvedData

LOCAL_HOSTS = frozenset({"localhost", "localhost.localdomain"})
# `.../datasets/OWNER/NAME/resolve/...` and `hf://datasets/OWNER/NAME/...`
HUB_DATASET = re.compile(r"^/?datasets/([^/]+)/([^/@]+)")
NON_COMMERCIAL = re.compile(r"\bNC\b|non[-\s]?commercial|research[-\s]use|academic", re.I)
PERMISSIVE = re.compile(
    r"^\s*(CC[-\s]?0|CC[-\s]BY(?:[-\s]SA)?(?:[-\s]\d\.\d)?|CDLA[-\s]Permissive|MIT|Apache|BSD"
    r"|public[-\s]domain|ODC[-\s]By|PDDL)\b",
    re.I,
)


def is_loopback(url: str) -> bool:
    """True for http(s) URLs on this machine only (127.0.0.0/8, ::1, localhost)."""
    if "://" not in url:
        return False
    try:
        host = (urllib.parse.urlparse(url).hostname or "").lower()
    except ValueError:  # a malformed URL (e.g. an unclosed IPv6 bracket)
        return False
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hub_repo_id(url: str) -> str | None:
    """OWNER/NAME of a Hugging Face dataset URL (resolve URL or hf://), else None."""
    try:
        parsed = urllib.parse.urlparse(url)
    except ValueError:
        return None
    if parsed.scheme == "hf":
        path = f"{parsed.netloc}{parsed.path}"
    elif parsed.scheme in ("http", "https") and (parsed.hostname or "").endswith("huggingface.co"):
        path = parsed.path
    else:
        return None
    match = HUB_DATASET.match(path)
    return f"{match.group(1)}/{match.group(2)}" if match else None


def card_text(text: object) -> str:
    """Text from manifests and folder sources (source names, licences) as literal Markdown on
    one line in a model card: no raw HTML (`<`, `>` as entities), line breaks as spaces."""
    return " ".join(str(text).split()).replace("<", "&lt;").replace(">", "&gt;")


def describe_shards(specs: Sequence[str]) -> str:
    """How records name the data: Hub repo ids, else the shard patterns as given.

    A loopback URL becomes "a local HTTP server (PATH)"; query strings (tokens) are dropped.
    """
    names: list[str] = []
    for spec in specs:
        for part in str(spec).split("::"):
            part = part.strip()
            if not part:
                continue
            repo = hub_repo_id(part)
            if repo:
                name = repo
            elif is_loopback(part):
                name = f"a local HTTP server ({urllib.parse.urlparse(part).path or '/'})"
            elif "://" in part:
                name = urllib.parse.urlparse(part)._replace(query="", fragment="").geturl()
            else:
                name = part
            if name not in names:
                names.append(name)
    return ", ".join(names) or "n/a"


@dataclass(frozen=True)
class WeightsLicence:
    """The weights' licence: a Hub licence id, its name where the id is "other", one sentence."""

    id: str  # "unknown" | "other"
    name: str | None  # license_name on the Hub (only with id "other")
    summary: str  # said plainly, for cards

    @property
    def short(self) -> str:
        """The word a timm pretrained_cfg carries: non-commercial, unknown or the name."""
        return self.name or self.id

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WeightsLicence:
        if not data:
            return weights_licence(None)
        return cls(str(data.get("id", "unknown")), data.get("name"), str(data.get("summary", "")))


def licence_kind(licence: str | None) -> str:
    """Kind of one source's licence text: non-commercial, permissive or unknown."""
    text = (licence or "").strip()
    if NON_COMMERCIAL.search(text):
        return "non-commercial"
    if PERMISSIVE.match(text):
        return "permissive"
    return "unknown"


def _listing(sources: Sequence[dict[str, Any]]) -> str:
    return "; ".join(
        f"{s.get('name') or s.get('id')}: {s.get('license') or 'not stated'}" for s in sources
    )


def weights_licence(sources: Sequence[dict[str, Any]] | None) -> WeightsLicence:
    """The licence weights trained on `sources` (the _info.json "sources" entries) can carry."""
    if not sources:
        return WeightsLicence(
            "unknown",
            None,
            "Unknown: the training data's sources and their licences were not recorded; "
            "check them before using or sharing these weights.",
        )
    kinds: dict[str, list[dict[str, Any]]] = {"non-commercial": [], "unknown": [], "permissive": []}
    for source in sources:
        kinds[licence_kind(source.get("license"))].append(source)
    unknown_note = (
        f" The licences of other sources are not known ({_listing(kinds['unknown'])}): "
        "check them too."
        if kinds["unknown"]
        else ""
    )
    if kinds["non-commercial"]:
        return WeightsLicence(
            "other",
            "non-commercial",
            "Non-commercial use only: these weights were trained on data licensed for "
            f"non-commercial use ({_listing(kinds['non-commercial'])}).{unknown_note}",
        )
    if kinds["unknown"]:
        return WeightsLicence(
            "unknown",
            None,
            "Unknown: the training data includes sources whose licences are not known "
            f"({_listing(kinds['unknown'])}); check them before using or sharing these weights.",
        )
    return WeightsLicence(
        "other",
        "permissive-sources",
        "Trained only on data under permissive licences "
        f"({_listing(kinds['permissive'])}); credit the sources as their licences ask.",
    )


@dataclass(frozen=True)
class DataRecord:
    """The training data as records name it."""

    name: str
    shards: int  # shard URLs selected
    samples: int | None  # samples in those shards, where _info.json tells
    sources: tuple[dict[str, Any], ...]  # the _info.json "sources" entries, as listed there

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sources": [dict(s) for s in self.sources]}


def data_record(
    specs: Sequence[str],
    urls: Sequence[str],
    samples: int | None,
    sources: Sequence[dict[str, Any]],
    name: str | None = None,
) -> DataRecord:
    return DataRecord(
        name=name or describe_shards(specs),
        shards=len(urls),
        samples=samples,
        sources=tuple(sources),
    )


def safe_shard_specs(specs: Sequence[str]) -> list[str]:
    """The --shards values for a saved config: loopback URLs reduced to what describes them."""
    return [describe_shards([s]) if is_loopback(s) else str(s) for s in specs]


def _shares_text(table: dict[str, Any]) -> str:
    return ", ".join(f"{name} {100 * float(share):.1f}%" for name, share in table.items())


def mixture_line(mixture: dict[str, Any] | None) -> str | None:
    """A run record's data mixture as one card line: the shares asked for (--mix, --mix-bin)
    and those realised in the samples trained on; None for records without one."""
    if not isinstance(mixture, dict):
        return None
    weights, drawn = mixture.get("weights") or {}, mixture.get("realised") or {}
    asked = "; ".join(
        f"{flag} {_shares_text(weights[kind])}"
        for kind, flag in (("sources", "--mix"), ("bins", "--mix-bin"))
        if weights.get(kind)
    )
    got = "; ".join(f"{kind} {_shares_text(drawn[kind])}" for kind in drawn if drawn[kind])
    return (
        f"- data mixture: {asked or 'as stored (every sample equally likely)'}; "
        f"realised: {got or 'not counted'}"
    )


def describe_data(config: PretrainConfig, data: ResolvedData) -> DataRecord:
    """The data as records name it, with the sources its index lists (narrowed to the selected
    shards: the samples are theirs)."""
    info = data.info
    return data_record(
        config.data.shards,
        data.urls,
        info.num_samples if info else None,
        info.sources if info else (),
        config.run.data_name,
    )
