"""Train/test splits written beside a probe's results and read back, so every encoder (and
every re-run) sees the same images.

    write_split(out / "split.json", "m3fd", split)
    split = read_split(Path("runs/a/split.json"), "m3fd")   # --split FILE

The file is JSON: {"layout": ..., "source": ..., "train": [names], "test": [names]}; names
are those the layout's reader gives its samples (file stems, or paths under the dataset).
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pretrain.probe.datasets import LayoutSamples, ProbeDataError

SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class Split:
    """Sample names of the train and test sets, and where the split came from."""

    train: tuple[str, ...]
    test: tuple[str, ...]
    source: str  # "seeded (seed 0)", the layout's split files or folders, or a split file


def write_json_atomic(path: Path, record: Any) -> Path:
    """JSON via `name.tmp` + rename: a reader (or a resumed eval) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def write_split(path: Path, layout: str, split: Split) -> Path:
    record = dict(
        layout=layout, source=split.source, train=list(split.train), test=list(split.test)
    )
    return write_json_atomic(path, record)


def read_split(path: Path | str, layout: str) -> Split:
    """A split file written by a probe (any layout's names); bad files are one-line errors."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ProbeDataError(
            f"--split {path} does not exist: pass a split.json a probe wrote"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ProbeDataError(f"--split {path} is not a JSON split file ({error})") from error
    lists = isinstance(record, dict) and all(
        isinstance(record.get(k), list) and all(isinstance(n, str) for n in record[k])
        for k in ("train", "test")
    )
    if not lists:
        raise ProbeDataError(
            f"--split {path} lacks 'train' and 'test' lists of image names: "
            f"pass a split.json a probe wrote"
        )
    if record.get("layout", layout) != layout:
        raise ProbeDataError(
            f"--split {path} is a split of the {record['layout']} layout, not "
            f"{layout}: pass the split of this dataset"
        )
    both = set(record["train"]) & set(record["test"])
    if both:
        raise ProbeDataError(
            f"--split {path} puts {len(both)} image(s) in both train and test "
            f"(e.g. {sorted(both)[0]!r}): fix the file"
        )
    origin = record.get("source") or "unknown"
    return Split(tuple(record["train"]), tuple(record["test"]), f"{path.name}: {origin}")


def apply_split(split: Split, available: Collection[str]) -> tuple[list[str], list[str], int]:
    """The split's train and test names that the data holds, and how many it does not."""
    train = [n for n in split.train if n in available]
    test = [n for n in split.test if n in available]
    return train, test, len(split.train) + len(split.test) - len(train) - len(test)


def check_sets(train: Sequence[str], test: Sequence[str], what: str) -> None:
    """An empty train or test set is a one-line error naming where the split came from."""
    for name, names in (("test", test), ("train", train)):
        if not names:
            raise ProbeDataError(
                f"the {name} set is empty ({what}): check the split and that the data holds "
                f"labelled images of both sets"
            )


def restrict(samples: LayoutSamples, split: Split) -> LayoutSamples:
    """A segmentation set's samples re-split by `split` (names are file stems)."""
    by_name = {s.name: s for s in samples.train + samples.test}
    train, test, _ = apply_split(split, by_name)
    check_sets(train, test, split.source)
    return replace(
        samples,
        train=tuple(by_name[n] for n in train),
        test=tuple(by_name[n] for n in test),
        split_source=split.source,
    )
