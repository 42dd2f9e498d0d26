"""--workers beyond the usable cores: capped, with one line saying so (torch's warning never)."""

from __future__ import annotations

import logging
import warnings

from pretrain.config import DataConfig
from pretrain.data import loader


def test_workers_are_capped_at_the_usable_cores_with_one_note(monkeypatch, caplog):
    monkeypatch.setattr(loader, "usable_cores", lambda: 2)
    with caplog.at_level(logging.WARNING, logger=loader.__name__):
        assert loader.loader_workers(4) == 2
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [
        "--workers 4: this machine lets the process use 2 cores, so 2 loader processes are used"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=loader.__name__):
        assert loader.loader_workers(2) == 2 and loader.loader_workers(0) == 0
    assert caplog.records == []


def test_the_loader_gets_the_capped_count_and_torch_does_not_warn(monkeypatch, caplog):
    cores = loader.usable_cores()
    config = DataConfig(shards=("/nowhere/x-000000.tar",), workers=cores + 3)
    with caplog.at_level(logging.WARNING, logger=loader.__name__):
        built, tracker = loader.loader_for(
            config, 64, seed=0, rank=0, world_size=1, pin_memory=False, urls=list(config.shards)
        )
    assert built.num_workers == cores and tracker.num_workers == cores
    assert len(caplog.records) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built.check_worker_number_rationality()  # what torch runs for every iterator
    assert not [w for w in caught if "worker" in str(w.message)]
