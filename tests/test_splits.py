from __future__ import annotations

from collections import defaultdict

import pytest

from training import splits
from training.datasets import read_cnmc, read_taleqani


def test_subject_split_puts_no_subject_on_two_sides(cnmc_copy):
    records = splits.deduplicate(read_cnmc(cnmc_copy).records).records
    split = splits.make_split(records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=7)
    assert split.unit == "subject"
    sides = defaultdict(set)
    for r in records:
        sides[r.subject].add(split.assignment[r.path])
    assert all(len(s) == 1 for s in sides.values()), {k: v for k, v in sides.items() if len(v) > 1}
    # every split receives subjects of both classes
    for part in splits.SPLITS:
        assert set(split.counts[part]) == {"lymphoblast", "normal-lymphoid"}


def test_split_is_seeded_and_reproducible(cnmc_copy):
    records = splits.deduplicate(read_cnmc(cnmc_copy).records).records
    a = splits.make_split(records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    b = splits.make_split(records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    c = splits.make_split(records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=4)
    assert a.assignment == b.assignment
    assert a.assignment != c.assignment


def test_image_split_is_stratified_without_subjects(taleqani_copy):
    records = splits.deduplicate(read_taleqani(taleqani_copy).records).records
    split = splits.make_split(records, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=1)
    assert split.unit == "image"
    for part in splits.SPLITS:
        assert set(split.counts[part]) == {"benign", "early-pre-b", "pre-b", "pro-b"}


def test_manifest_round_trip(tmp_path, cnmc_copy):
    ds = read_cnmc(cnmc_copy)
    dedup = splits.deduplicate(ds.records)
    split = splits.make_split(dedup.records, {"train": 0.6, "val": 0.2, "test": 0.2}, seed=7)
    splits.write_manifest(tmp_path, dedup.records, split, dedup, [{"name": ds.info.name, "root": str(ds.root)}])
    rows = splits.read_manifest(tmp_path / "split_manifest.csv")
    assert len(rows) == len(dedup.records)
    assert {r["split"] for r in rows} == set(splits.SPLITS)
    assert all(len(r["sha256"]) == 64 and r["subject"] for r in rows)


def test_bad_fractions_are_refused(cnmc_copy):
    records = read_cnmc(cnmc_copy).records
    with pytest.raises(ValueError, match="add up to 1"):
        splits.make_split(records, {"train": 0.9, "val": 0.2, "test": 0.2}, seed=1)
