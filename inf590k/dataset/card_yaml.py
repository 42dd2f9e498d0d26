"""The card's YAML front matter, as the Hugging Face Hub reads it: a config per resolution bin
and `all` (data_files globs over the shards), the features of a sample, the size category.
"""

from __future__ import annotations

import copy

import yaml

from inf590k.dataset.layout import (
    DATA_DIRNAME,
    LICENSES_PATH,
    info_shards,
    json_feature_types,
)

ALL_CONFIG = "all"
TAGS = ["infrared", "thermal", "webdataset", "self-supervised-pretraining", "inf590k"]


def size_category(samples: int) -> str:
    for limit, label in (
        (1e3, "n<1K"),
        (1e4, "1K<n<10K"),
        (1e5, "10K<n<100K"),
        (1e6, "100K<n<1M"),
        (1e7, "1M<n<10M"),
    ):
        if samples < limit:
            return label
    return "10M<n<100M"


def bins_of(info: dict) -> dict[str, list[tuple[str, int]]]:
    """bin -> [(shard relpath under data/, samples)], sorted."""
    bins: dict[str, list[tuple[str, int]]] = {}
    for name, length in info_shards(info):
        bins.setdefault(name.split("/", 1)[0], []).append((name, length))
    return dict(sorted(bins.items()))


def split_of(info: dict) -> str:
    return next(iter(info.get("splits", {"train": {}})))


def card_configs(info: dict) -> list[dict]:
    """`all` (default) and one config per bin, each a glob over its tars under data/."""
    split = split_of(info)
    configs = [
        {
            "config_name": ALL_CONFIG,
            "default": True,
            "data_files": [{"split": split, "path": f"{DATA_DIRNAME}/*/*.tar"}],
        }
    ]
    for bin_name in bins_of(info):
        configs.append(
            {
                "config_name": bin_name,
                "data_files": [{"split": split, "path": f"{DATA_DIRNAME}/{bin_name}/*.tar"}],
            }
        )
    return configs


def _feature(name: str, dtype: str) -> dict:
    if dtype.startswith("list<"):
        return {"name": name, "list": dtype[5:-1]}
    return {"name": name, "dtype": {"float": "float32", "double": "float64"}.get(dtype, dtype)}


def card_features(info: dict, table: list[dict]) -> list[dict]:
    """`dataset_info.features` in the Hub's YAML form: what `datasets` gives per sample."""
    names = {str(int(e["class_id"])): e["id"] for e in table}
    features = [
        {"name": "cls", "dtype": {"class_label": {"names": names}}},
        {"name": "json", "struct": [_feature(k, v) for k, v in json_feature_types().items()]},
    ]
    if "npy" in info.get("members", []):
        features.append({"name": "npy", "list": {"list": "uint16"}})
    features += [
        {"name": "png", "dtype": "image"},
        {"name": "__key__", "dtype": "string"},
        {"name": "__url__", "dtype": "string"},
    ]
    return features


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: ~10x faster on big cards


def card_yaml(info: dict, table: list[dict], samples: int) -> str:
    configs = card_configs(info)
    features = card_features(info, table)
    header = {
        "license": "other",
        "license_name": "per-source",
        "license_link": LICENSES_PATH,
        "pretty_name": info.get("name", "inf590k"),
        "task_categories": ["image-feature-extraction"],
        "size_categories": [size_category(samples)],
        "tags": TAGS,
        "configs": configs,
        # one copy per config: shared objects would become YAML anchors and aliases
        "dataset_info": [
            {"config_name": c["config_name"], "features": copy.deepcopy(features)} for c in configs
        ],
    }
    return yaml.dump(header, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)
