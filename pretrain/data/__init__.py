"""The training side's data: the dataset's index (`index`), opening URLs (`remote`), the shard
stream (`stream`, `loader`), decoding and augmentation (`transforms`), and the readers made for
the shards (`tarstream`, `pngcrop`). The names the rest of `pretrain` uses are here."""

from pretrain.config import DataConfig
from pretrain.data.index import (
    DatasetInfo,
    ResolvedData,
    dataset_info,
    epoch_length,
    epoch_samples,
    expand_shard_urls,
    expected_lengths,
    find_info_url,
    folder_info,
    index_member_url,
    is_info_url,
    read_info,
    resolve_data,
    shard_key,
)
from pretrain.data.loader import (
    StreamTracker,
    loader_for,
    make_loader,
    mixture_for,
    usable_cores,
)
from pretrain.data.mixture import (
    Mixture,
    add_counts,
    describe_realised,
    parse_weights,
    plan_mixture,
    realised,
    shares,
)
from pretrain.data.order import bounded_shuffle, sample_window
from pretrain.data.remote import (
    NetworkDisabledError,
    ShardReadTimeout,
    ShardUnreachableError,
    open_url,
    redact_url,
)
from pretrain.data.stream import ShardStream, WorkerPosition
from pretrain.data.transforms import (
    crop_box,
    crop_flip,
    crop_png,
    decode_ir_png,
    decode_raw_npy,
    random_resized_crop_box,
    stretch_range,
    to_uint8,
)

__all__ = [
    "DataConfig",
    "DatasetInfo",
    "Mixture",
    "NetworkDisabledError",
    "ResolvedData",
    "ShardReadTimeout",
    "ShardStream",
    "ShardUnreachableError",
    "StreamTracker",
    "WorkerPosition",
    "add_counts",
    "bounded_shuffle",
    "crop_box",
    "crop_flip",
    "crop_png",
    "dataset_info",
    "decode_ir_png",
    "decode_raw_npy",
    "describe_realised",
    "epoch_length",
    "epoch_samples",
    "expand_shard_urls",
    "expected_lengths",
    "find_info_url",
    "folder_info",
    "index_member_url",
    "is_info_url",
    "loader_for",
    "make_loader",
    "mixture_for",
    "open_url",
    "parse_weights",
    "plan_mixture",
    "random_resized_crop_box",
    "read_info",
    "realised",
    "redact_url",
    "resolve_data",
    "sample_window",
    "shard_key",
    "shares",
    "stretch_range",
    "to_uint8",
    "usable_cores",
]
