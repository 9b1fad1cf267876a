"""The label vocabulary and its categories, read from ``data/labels.toml``."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

CATEGORIES = ("normal", "malignant", "atypical", "non-leukocyte")
# A cell the classifier is not confident about; never forced into a class.
UNCERTAIN = "uncertain"
# Classes a reviewer may choose although the model in use does not know them (a blast subtype, an atypical
# lymphocyte, a smudge cell): the reviewer sees more than the model was trained on.
REVIEW_EXTRA = ("lymphoblast", "myeloblast", "atypical-lymphocyte", "smudge-cell")


@dataclass(frozen=True)
class Label:
    name: str
    category: str
    display: str


@lru_cache(maxsize=1)
def _merges() -> dict[str, dict[str, str]]:
    """Per task: a source label -> the task's label it counts as (e.g. a promyelocyte is an immature
    granulocyte for the screen, a myeloblast a blast)."""
    raw = tomllib.loads(resources.files("device").joinpath("data/labels.toml").read_text("utf-8"))
    labels, tasks = _vocabulary()
    out: dict[str, dict[str, str]] = {}
    for task, groups in raw.get("merge", {}).items():
        if task not in tasks:
            raise ValueError(f"[merge.{task}]: no such task")
        for target, sources in groups.items():
            if target not in tasks[task]:
                raise ValueError(f"[merge.{task}] {target!r} is not a label of the task")
            for src in sources:
                if src not in labels:
                    raise ValueError(f"[merge.{task}] {src!r} is not in the vocabulary")
                out.setdefault(task, {})[src] = target
    return out


def task_label(task: str, name: str) -> str | None:
    """The label ``name`` takes in ``task`` (itself, or what the task merges it into), or None."""
    if name in task_labels(task):
        return name
    return _merges().get(task, {}).get(name)


@lru_cache(maxsize=1)
def _vocabulary() -> tuple[dict[str, Label], dict[str, tuple[str, ...]]]:
    raw = tomllib.loads(resources.files("device").joinpath("data/labels.toml").read_text("utf-8"))
    labels = {}
    for name, spec in raw["labels"].items():
        if spec["category"] not in CATEGORIES:
            raise ValueError(f"label {name!r}: unknown category {spec['category']!r}")
        labels[name] = Label(name, spec["category"], spec.get("display", name))
    tasks = {}
    for task, names in raw["tasks"].items():
        missing = [n for n in names if n not in labels]
        if missing:
            raise ValueError(f"task {task!r} names labels missing from the vocabulary: {missing}")
        tasks[task] = tuple(names)
    return labels, tasks


def label(name: str) -> Label:
    labels, _ = _vocabulary()
    try:
        return labels[name]
    except KeyError:
        raise KeyError(f"unknown label {name!r}; known: {sorted(labels)}") from None


def category_of(name: str) -> str:
    return label(name).category


def task_labels(task: str) -> tuple[str, ...]:
    _, tasks = _vocabulary()
    try:
        return tasks[task]
    except KeyError:
        raise KeyError(f"unknown task {task!r}; known: {sorted(tasks)}") from None


def tasks() -> tuple[str, ...]:
    return tuple(_vocabulary()[1])


def review_choices(model_labels) -> list[str]:
    """Every class a reviewer may choose: the model's own, then the review extras it lacks."""
    return list(model_labels) + [n for n in REVIEW_EXTRA if n not in model_labels]
