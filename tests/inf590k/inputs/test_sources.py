"""Listing a folder source in parts gives exactly the one-pass listing, whatever the cut."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest

from inf590k.inputs.sources import (
    LINKED_FOLDER,
    NOT_UTF8,
    ListingUnit,
    SourceEntry,
    list_entries,
    list_unit,
    listing_units,
)
from tests.builders import tricky_tree


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    tricky_tree(root)
    yield root
    (root / "closed").chmod(0o755)


@pytest.mark.parametrize(("wanted", "files"), [(1, 4096), (4, 3), (64, 1), (1000, 5)])
def test_units_joined_in_order_equal_the_one_pass_listing(tree, wanted, files):
    units = listing_units(tree, wanted, files)
    joined = [entry for unit in units for entry in list_unit(tree, unit)]
    assert joined == [replace(entry, order=0) for entry in list_entries(tree)]  # order: tars only
    assert all(len(unit.items) <= files for unit in units)
    if wanted > 1:
        assert len(units) > 1


def test_links_loops_and_unreadable_folders_keep_their_rows(tree):
    entries = {e.relpath: e for unit in listing_units(tree, 64, 2) for e in list_unit(tree, unit)}
    assert entries["up"].problem == entries["b-link"].problem == LINKED_FOLDER
    assert "flat/000.png" in entries and not any(rel.startswith(("up/", "b-link/")) for rel in entries)
    assert entries["loop.png"].problem == "symbolic link loop"
    assert entries["b/dangling.png"].problem == "broken symbolic link"
    if os.geteuid() != 0:  # root reads any folder
        assert entries["closed"].problem.startswith("unreadable folder")
    assert entries["caf\\xe9/f.png"].problem == NOT_UTF8


def test_an_empty_or_unreadable_root_has_no_units(tmp_path):
    (tmp_path / "empty").mkdir()
    assert listing_units(tmp_path / "empty", 8) == [] == list_entries(tmp_path / "empty")
    assert list_unit(tmp_path, ListingUnit(items=(SourceEntry("x", 0, "known"),))) == [SourceEntry("x", 0, "known")]
