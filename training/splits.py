"""De-duplication and seeded splits, by subject wherever subject ids exist.

A cell-level random split puts cells of one patient on both sides and
flatters the test figures, so subjects are the unit whenever a dataset has
them; otherwise the split is stratified by class and says so in its manifest.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from training.datasets import Record

SPLITS = ("train", "val", "test")


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Deduplicated:
    records: list[Record]
    sha256: dict[str, str]  # path -> content hash
    duplicates_removed: int
    conflicting_removed: int  # identical files that carried different labels: all copies dropped


def deduplicate(records: list[Record]) -> Deduplicated:
    """Keep one file per content hash (the first by path). Identical files with
    different labels cannot be trusted, so every copy of those is dropped."""
    by_hash: dict[str, list[Record]] = defaultdict(list)
    hashes = {}
    for r in sorted(records, key=lambda r: (r.dataset, r.relpath)):
        digest = file_sha256(r.path)
        hashes[r.path] = digest
        by_hash[digest].append(r)
    kept, dup, conflict = [], 0, 0
    for group in by_hash.values():
        if len({r.label for r in group}) > 1:
            conflict += len(group)
            continue
        kept.append(group[0])
        dup += len(group) - 1
    kept.sort(key=lambda r: (r.dataset, r.relpath))
    return Deduplicated(kept, {r.path: hashes[r.path] for r in kept}, dup, conflict)


@dataclass
class Split:
    assignment: dict[str, str]  # path -> split name
    unit: str  # "subject" or "image"
    seed: int
    fractions: dict[str, float]
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def records(self, records: list[Record], name: str) -> list[Record]:
        return [r for r in records if self.assignment[r.path] == name]


def _allocate(sizes: list[tuple[str, int]], fractions: dict[str, float], rng: random.Random) -> dict[str, str]:
    """Give each group (key, size) to the split that is furthest below its target share."""
    order = sizes[:]
    rng.shuffle(order)
    order.sort(key=lambda kv: -kv[1])  # large groups first, ties in seeded order
    total = sum(n for _, n in order)
    filled = {s: 0 for s in SPLITS}
    out = {}
    for key, n in order:
        # deficit relative to the target; a split with a zero target never receives anything
        best = max((s for s in SPLITS if fractions[s] > 0),
                   key=lambda s: (fractions[s] * total - filled[s]) / (fractions[s] * total))
        out[key] = best
        filled[best] += n
    return out


def make_split(records: list[Record], fractions: dict[str, float], seed: int) -> Split:
    fractions = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if abs(sum(fractions.values()) - 1.0) > 1e-6 or min(fractions.values()) < 0:
        raise ValueError(f"split fractions must be >= 0 and add up to 1, got {fractions}")
    rng = random.Random(seed)
    has_subjects = any(r.subject is not None for r in records)
    assignment: dict[str, str] = {}
    if has_subjects:
        # A record without a subject id is its own group, so it cannot pull a subject across.
        groups: dict[str, list[Record]] = defaultdict(list)
        for r in records:
            groups[f"{r.dataset}:{r.subject}" if r.subject is not None else f"file:{r.path}"].append(r)
        # Stratify groups by their majority label, then allocate within each stratum.
        strata: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for key, members in sorted(groups.items()):
            majority = Counter(r.label for r in members).most_common(1)[0][0]
            strata[majority].append((key, len(members)))
        for stratum in sorted(strata):
            for key, split in _allocate(strata[stratum], fractions, rng).items():
                for r in groups[key]:
                    assignment[r.path] = split
        unit = "subject"
    else:
        by_label: dict[str, list[Record]] = defaultdict(list)
        for r in records:
            by_label[r.label].append(r)
        for lab in sorted(by_label):
            items = sorted(by_label[lab], key=lambda r: r.path)
            rng.shuffle(items)
            n = len(items)
            n_test = round(n * fractions["test"])
            n_val = round(n * fractions["val"])
            if n >= 3:  # keep every class on every side that asks for it
                n_test = max(n_test, 1) if fractions["test"] > 0 else 0
                n_val = max(n_val, 1) if fractions["val"] > 0 else 0
            for i, r in enumerate(items):
                assignment[r.path] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
        unit = "image"
    counts = {s: dict(sorted(Counter(r.label for r in records if assignment[r.path] == s).items())) for s in SPLITS}
    return Split(assignment, unit, seed, fractions, counts)


MANIFEST_FIELDS = ("split", "dataset", "relpath", "label", "subject", "sha256", "um_per_px", "kind")


def write_manifest(run_dir: Path, records: list[Record], split: Split, dedup: Deduplicated,
                   sources: list[dict]) -> None:
    """``split_manifest.csv`` (one row per image) and ``split_summary.json``."""
    with open(run_dir / "split_manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(MANIFEST_FIELDS)
        for r in records:
            w.writerow((split.assignment[r.path], r.dataset, r.relpath, r.label, r.subject or "", dedup.sha256[r.path],
                        r.um_per_px or "", r.kind))
    summary = {
        "unit": split.unit,
        "seed": split.seed,
        "fractions": split.fractions,
        "counts": split.counts,
        "duplicates_removed": dedup.duplicates_removed,
        "conflicting_duplicates_removed": dedup.conflicting_removed,
        "sources": sources,
    }
    (run_dir / "split_summary.json").write_text(json.dumps(summary, indent=2))


def read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
