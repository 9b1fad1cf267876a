"""Counting a sample: cells over many fields -> counts per label and category, malignant fraction, flags; the
final-label rule every count, page and export uses."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from device.model import vocabulary
from device.schema import N_, check, setting

DISCLAIMER = ("Screening aid only, not a diagnosis. Every result must be confirmed by a qualified person "
              "reviewing the smear.")


@dataclass(frozen=True)
class FlagRule:
    """Raise ``message`` when the count (or fraction of counted leukocytes) of a
    category reaches the given minimum. ``category`` may also be "uncertain". One ``[[sample.flags]]`` table of
    the config file, each key with its range (device/schema.py)."""
    category: str = setting(max_length=60)
    message: str = setting(max_length=300)
    level: str = setting("review", choices=("review", "refer"))
    min_count: int = setting(0, ge=0, le=10000)
    min_fraction: float = setting(0.0, ge=0, le=1)

    def __post_init__(self):
        if self.category not in (*vocabulary.CATEGORIES, vocabulary.UNCERTAIN):
            raise ValueError(f"flag rule: unknown category {self.category!r}")
        if self.min_count <= 0 and self.min_fraction <= 0:
            raise ValueError("flag rule: give min_count or min_fraction")
        check(self)


# Referral from 3 blasts in 100: the lowest count that meets both sample targets of the screen IF each cell's
# specificity reaches 99.5 % (binomial: 1.4 % of normal samples reach 3 false blasts; a sample with 5 % blasts is
# caught 99.97 % of the time at 97 % sensitivity). Measured on real held-out cells by bench.blast_screen: normal
# blood cells from PBC meet it; bone-marrow normal cells of the blasts' own lab do not (they are called blast far
# more often), so there every sample is referred. 20 % is the WHO threshold for acute leukaemia.
DEFAULT_RULES = (
    FlagRule("malignant", "Blast-like cells present: a qualified reviewer must examine the smear", "review", min_count=1),
    FlagRule("malignant", "Blasts at or above 3 in 100 counted white cells: refer to a haematology service", "refer",
             min_fraction=0.03),
    FlagRule("malignant", "Suspicious for acute leukaemia: refer", "refer", min_fraction=0.20),
    FlagRule("atypical", "Atypical or immature cells present: review", "review", min_count=1),
    FlagRule(vocabulary.UNCERTAIN, "Cells the model could not classify confidently: review them", "review", min_count=1),
)


@dataclass
class SampleConfig:
    """The ``[sample]`` section: the count each sample aims at and the flag rules it is judged by."""
    target_cells: int = setting(100, ge=1, le=10000, label=N_("Target white cells per sample"))
    flags: list[FlagRule] = setting(factory=lambda: list(DEFAULT_RULES))


# A reviewer's decision that a detected object is not a white cell (a fragment cut by the field edge, debris, a
# smudge the finder took for a nucleus): it leaves every white-cell count, the target and the blast fraction.
NOT_A_CELL = "not-a-cell"
POSSIBLE_BLAST = "possible-blast"  # the model's flag for a cell whose blast probability is near the operating point


def category_of(name: str) -> str:
    """The category a (final) label counts in: the vocabulary's. "uncertain" for the uncertain label and for a
    label the vocabulary does not know (stored by a bundle since removed): such a cell keeps its stored name and
    is counted and flagged as uncertain, never dropped and never an error."""
    if name == vocabulary.UNCERTAIN:
        return vocabulary.UNCERTAIN
    if name == NOT_A_CELL:
        return "non-leukocyte"
    try:
        return vocabulary.category_of(name)
    except KeyError:
        return vocabulary.UNCERTAIN


def final_label(label: str, flag: str | None, operator_label: str | None) -> tuple[str, str]:
    """The one rule for a cell's final label and category, used by the pages, the PDF, the CSV, the JSON and the
    counts: a reviewer's label wins; otherwise a cell the model flagged is uncertain; otherwise the model's label.
    The category always comes from ``category_of``."""
    if operator_label:
        return operator_label, category_of(operator_label)
    if flag:
        return vocabulary.UNCERTAIN, vocabulary.UNCERTAIN
    return label, category_of(label)


def needs_decision(flag: str | None, operator_label: str | None) -> bool:
    """An uncertain cell nobody has decided yet: it is not counted until a reviewer chooses its class."""
    return bool(flag) and not operator_label


@dataclass(frozen=True)
class CountedCell:
    label: str  # the model's label
    category: str
    flag: str | None = None  # the model's uncertainty flag
    operator_label: str | None = None  # a reviewer's label overrides the model

    @property
    def final(self) -> tuple[str, str]:
        return final_label(self.label, self.flag, self.operator_label)


def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class SampleSummary:
    by_label: dict[str, int]
    by_category: dict[str, int]
    uncertain: int
    leukocytes: int  # counted white cells: normal + malignant + atypical (uncertain and non-leukocytes apart)
    malignant: int
    malignant_fraction: float
    malignant_ci: tuple[float, float]
    seen: int  # white cells toward the target: classified leukocytes only (uncertain cells are shown beside it)
    target: int
    progress: float
    flags: list[dict] = field(default_factory=list)
    unreviewed: int = 0  # cells no reviewer has confirmed or decided yet (uncertain or not)
    disclaimer: str = DISCLAIMER
    undecided: int = 0  # uncertain cells nobody has decided: outside the fraction's denominator until decided
    # the blast fraction if every undecided cell were not a blast / were a blast (of decided + undecided cells)
    malignant_range: tuple[float, float] = (0.0, 0.0)
    site: dict | None = None  # with a site calibration: expected false calls, the test, the calibration's words

    def rows(self) -> list[dict]:
        out = []
        for name, n in self.by_label.items():
            if name == vocabulary.UNCERTAIN:
                out.append({"label": name, "display": "Uncertain (awaiting review)", "category": vocabulary.UNCERTAIN,
                            "count": n})
            elif name == NOT_A_CELL:
                out.append({"label": name, "display": "Not a white cell / fragment", "category": "non-leukocyte",
                            "count": n})
            else:
                known = vocabulary.label(name) if category_of(name) != vocabulary.UNCERTAIN else None
                out.append({"label": name, "display": known.display if known else name, "category": category_of(name),
                            "count": n})
        return out

    @property
    def target_reached(self) -> bool:
        return self.leukocytes >= self.target

    @property
    def insufficient(self) -> bool:
        return not self.target_reached

    def to_dict(self) -> dict:
        return {"by_label": self.by_label, "rows": self.rows(), "by_category": self.by_category, "uncertain": self.uncertain,
                "leukocytes": self.leukocytes, "malignant": self.malignant,
                "malignant_fraction": self.malignant_fraction, "malignant_ci": list(self.malignant_ci),
                "seen": self.seen, "target": self.target, "progress": self.progress, "flags": self.flags,
                "target_reached": self.target_reached, "unreviewed": self.unreviewed, "disclaimer": self.disclaimer,
                "undecided_cells": self.undecided, "malignant_range": list(self.malignant_range),
                "fraction_of": f"{self.malignant} blast(s) in {self.leukocytes} decided white cells"
                               + (f"; {self.undecided} cell(s) not yet decided" if self.undecided else ""),
                "site": self.site}


INSUFFICIENT = "insufficient"  # the flag level of a count below its target: never read as "no flag"


SITE_REFER = "More blast calls than this box's measured false calls explain: refer to a haematology service"
SITE_UNDECIDED = "Undecided cells could make this a referral: decide them before finishing"


def _site_flags(malignant: int, leukocytes: int, undecided: int, site: dict, rules) -> tuple[list[dict], dict]:
    """The refer rule that knows the site: a one-sided binomial test of the blast calls among decided white cells
    against the site calibration's measured false-call rate (``device.calibration.referral``). The 20 % message
    only when the test also refers; undecided cells are never counted, but a review flag says when deciding them
    could turn the result into a referral."""
    from device.calibration.referral import excess

    test = excess(malignant, leukocytes, float(site["false_call_rate"]))
    flags = []
    if test["refer"]:
        flags.append({"level": "refer", "message": SITE_REFER, "category": "malignant", "count": malignant})
        for rule in rules:
            if rule.level == "refer" and rule.category == "malignant" and rule.min_fraction >= 0.2 and leukocytes \
                    and malignant / leukocytes >= rule.min_fraction:
                flags.append({"level": "refer", "message": rule.message, "category": "malignant", "count": malignant})
    elif undecided and excess(malignant + undecided, leukocytes + undecided, float(site["false_call_rate"]))["refer"]:
        flags.append({"level": "review", "message": SITE_UNDECIDED, "category": "malignant", "count": undecided})
    return flags, {**site, **test}


def _rule_flags(by_category: dict, leukocytes: int, rules, site_refers: bool) -> list[dict]:
    """The flag rules that fire; with a site calibration its own test replaces the blast-fraction refer rule."""
    flags = []
    for rule in rules:
        if site_refers and rule.level == "refer" and rule.category == "malignant":
            continue  # replaced by the site's test
        count = by_category[rule.category]
        frac = count / leukocytes if leukocytes else 0.0
        if (rule.min_count and count >= rule.min_count) or (rule.min_fraction and leukocytes and frac >= rule.min_fraction):
            flags.append({"level": rule.level, "message": rule.message, "category": rule.category, "count": count})
    return flags


def summarize(cells: list[CountedCell], target: int = 100, rules=DEFAULT_RULES, site: dict | None = None) -> SampleSummary:
    """``site``: the sample's site calibration ({"false_call_rate", "name"}); its refer rule replaces the
    fixed blast-fraction refer rules."""
    finals = [c.final for c in cells]
    by_label = dict(sorted(Counter(lbl for lbl, _ in finals).items()))
    by_category = {c: 0 for c in (*vocabulary.CATEGORIES, vocabulary.UNCERTAIN)}
    for _, cat in finals:
        by_category[cat] += 1
    leukocytes = by_category["normal"] + by_category["malignant"] + by_category["atypical"]
    malignant = by_category["malignant"]
    fraction = malignant / leukocytes if leukocytes else 0.0
    flags = []
    undecided = sum(1 for c in cells if needs_decision(c.flag, c.operator_label))
    site_result = None
    if site is not None:
        site_flags, site_result = _site_flags(malignant, leukocytes, undecided, site, rules)
    flags += _rule_flags(by_category, leukocytes, rules, site_refers=site is not None)
    if leukocytes < target:
        flags.insert(0, {"level": INSUFFICIENT, "message": f"Insufficient: {leukocytes} of {target} cells",
                         "category": INSUFFICIENT, "count": leukocytes, "target": target})
    if site is not None:
        flags[1 if flags and flags[0]["level"] == INSUFFICIENT else 0:0] = site_flags
    unreviewed = sum(1 for c in cells if not c.operator_label)
    whole = leukocytes + undecided
    frange = (malignant / whole, (malignant + undecided) / whole) if whole else (0.0, 0.0)
    return SampleSummary(by_label, by_category, by_category[vocabulary.UNCERTAIN], leukocytes, malignant, fraction,
                         wilson_interval(malignant, leukocytes), leukocytes, target,
                         min(1.0, leukocytes / target) if target else 1.0, flags, unreviewed,
                         undecided=undecided, malignant_range=frange, site=site_result)
