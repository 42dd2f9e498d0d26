"""What dedupe leaves for a person to check: BUILD/dedupe/report.json (groups, reasons, counts)
and the contact sheet of the largest groups.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa

from inf590k.build import catalog as cat
from inf590k.build.dedupe.config import DedupeConfig, OutsideSet, _Groups, _Match
from inf590k.build.rows import load_stored_pixels


def write_report(
    report_dir: Path,
    config: DedupeConfig,
    candidates: pa.Table,
    groups: _Groups,
    group_ids: np.ndarray,
    distances: np.ndarray,
    outside: list[OutsideSet],
    outside_match: dict[int, _Match],
) -> dict:
    """report.json: settings, counts, and every group with members and distances.
    `group_ids`: [components] dup_group of each component (-1 alone); `distances`: [N] pHash
    distance of each row to its kept row."""
    multi = np.flatnonzero(groups.sizes > 1)  # group members alone are read: no list per column
    rows = candidates.select(["uid", "source", "width", "height"]).take(pa.array(multi)).to_pylist()
    columns = zip(
        rows,
        group_ids[groups.labels[multi]].tolist(),
        (groups.kept[multi] == multi).tolist(),
        groups.exact[multi].tolist(),
        distances[multi].tolist(),
        strict=True,
    )
    members: dict[int, list[dict]] = {}
    for row, group, kept, exact, distance in columns:
        members.setdefault(group, []).append(
            {**row, "kept": kept, "exact": exact, "phash_distance_to_kept": distance}
        )
    listed = []
    for group_id in sorted(members):
        group_members = sorted(members[group_id], key=lambda m: (not m["kept"], m["uid"]))
        listed.append(
            {"group": group_id, "kept": group_members[0]["uid"], "members": group_members}
        )
    matched = sorted(outside_match.items())
    matched_uids = candidates.column("uid").take(pa.array([i for i, _ in matched], type=pa.int64()))
    report = {
        "radius": config.radius,
        "dhash_max": config.dhash_max,
        "feature_model": str(config.feature_model) if config.feature_model else None,
        "feature_threshold": config.feature_threshold if config.feature_model else None,
        "keep_rule": "largest width*height, then source priority, then uid",
        "priority": list(config.priority),
        "candidates": len(candidates),
        "groups": listed,
        "against": [
            {"reason": o.reason, "images": len(o.fingerprints.labels), "unreadable": o.skipped}
            for o in outside
        ],
        "outside_matches": [
            {"uid": uid, "reason": m.reason, "phash_distance": m.distance}
            for uid, (_, m) in zip(matched_uids.to_pylist(), matched, strict=True)
        ],
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    tmp = report_dir / "report.json.tmp"
    tmp.write_text(json.dumps(report, separators=(",", ":")))  # indent would use the slow encoder
    tmp.replace(report_dir / "report.json")
    return report


CAPTION_LINES = 4  # group and decision, source, folder, file name
CAPTION_LINE_PX = 13
CAPTION_SCALE = 0.35


def member_caption(group: int, member: dict, relpath: str, width: int) -> tuple[str, str, str, str]:
    """The caption lines under a thumbnail: "g3 kept" / "g3 d=6" (pHash distance to the kept
    image; "exact copy" for the same pixels), the source id, the file's folder in its source
    ("(root)" at the top) and its name, each cut from the left to fit `width` px (the end of a
    name tells files apart). The folder tells a crop from its original of the same name."""
    if member["kept"]:
        decision = "kept"
    elif member.get("exact"):
        decision = "exact copy"
    else:
        decision = f"d={member['phash_distance_to_kept']}"
    folder, _, name = relpath.rpartition("/")
    return (
        f"g{group} {decision}",
        fit_text(str(member["source"]), width),
        fit_text(f"{folder}/" if folder else "(root)", width),
        fit_text(name or relpath, width),
    )


def fit_text(text: str, width: int) -> str:
    """`text` (ASCII, as OpenCV's fonts draw it) cut from the left with ".." to fit `width` px."""
    text = text.encode("ascii", "replace").decode()
    font = cv2.FONT_HERSHEY_SIMPLEX
    if cv2.getTextSize(text, font, CAPTION_SCALE, 1)[0][0] <= width:
        return text
    while len(text) > 1 and cv2.getTextSize(".." + text, font, CAPTION_SCALE, 1)[0][0] > width:
        text = text[1:]
    return ".." + text


def write_contact_sheet(
    path: Path, build: Path, report: dict, max_groups: int, thumb: int = 112
) -> Path | None:
    """A PNG with one row per largest group: the kept image first; under each image its group
    and decision (kept, or the pHash distance to the kept one), source, folder and file name."""

    largest = sorted(report["groups"], key=lambda g: (-len(g["members"]), g["group"]))[:max_groups]
    if not largest:
        return None
    uids = {m["uid"] for g in largest for m in g["members"][:8]}
    by_uid = {row["uid"]: row for row in cat.read_rows(build, uids)}  # those rows alone
    columns = min(8, max(len(g["members"]) for g in largest))
    row_h = thumb + 6 + CAPTION_LINES * CAPTION_LINE_PX
    sheet = np.full((len(largest) * row_h, columns * (thumb + 4)), 255, dtype=np.uint8)
    for r, group in enumerate(largest):
        for c, member in enumerate(group["members"][:columns]):
            try:
                image = load_stored_pixels(build, by_uid[member["uid"]])
            except Exception:  # a moved source still gets a labelled blank tile
                image = np.zeros((thumb, thumb), dtype=np.uint8)
            scale = thumb / max(image.shape)
            small = cv2.resize(
                image, (max(1, int(image.shape[1] * scale)), max(1, int(image.shape[0] * scale)))
            )
            y, x = r * row_h, c * (thumb + 4)
            sheet[y : y + small.shape[0], x : x + small.shape[1]] = small
            row = by_uid.get(member["uid"], {})
            caption = member_caption(group["group"], member, row.get("relpath", member["uid"]), thumb)
            for line, text in enumerate(caption):
                cv2.putText(
                    sheet,
                    text,
                    (x + 2, y + thumb + 2 + (line + 1) * CAPTION_LINE_PX),
                    cv2.FONT_HERSHEY_SIMPLEX,
                    CAPTION_SCALE,
                    0,
                    1,
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), sheet)
    return path
