"""The shard stage: kept catalog rows -> WebDataset tars in a dataset folder (the Hub repo)."""

from inf590k.build.shard.plan import ShardConfig
from inf590k.build.shard.stage import ShardSummary, shard

__all__ = ["ShardConfig", "ShardSummary", "shard"]
