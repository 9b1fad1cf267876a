"""How a module declares its settings: one dataclass field per setting, with its range and its page label.

A section of the config file is a plain dataclass owned by the module that uses it (``[qc]`` in
device/analysis/qc.py, ``[cells]`` in device/analysis/cells.py, ...). Each field is declared once, with
``setting()``: its default, its range, its choices and, when the Settings page edits it, its label (an
``N_()`` string, translated on the page). A section used in code too calls ``check(self)`` in its
``__post_init__`` (the same declared ranges for an object built in code); cross-field rules are checks there
too (``below()``). From these declarations device/config.py builds the TOML loader's pydantic models and the
defaults dump, and device/web/settings_form.py the Settings page's fields.

Standard library only: the analysis settings are used by the training code too, which has no pydantic.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


def N_(text: str) -> str:
    """Marks a message for the translation catalogue; translated where it is shown (the Settings page)."""
    return text


@dataclass(frozen=True)
class Spec:
    """What a setting accepts, beyond its type. Numbers: ``ge``/``gt`` and ``le`` (for a width-and-height
    list, of each item). Text: ``max_length`` or ``choices``. ``label``: shown on the Settings page (which edits
    exactly the settings that have one); ``empty``: what an empty width-and-height list means (else it needs two
    numbers)."""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    max_length: int | None = None
    choices: tuple[str, ...] = ()
    label: str = ""
    empty: str = ""


def setting(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, **spec) -> dataclasses.Field:
    """One setting of a section: ``max_edge_um: float = setting(0.95, gt=0, le=10, label=N_("..."))``."""
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata={"spec": Spec(**spec)})
    return dataclasses.field(default=default, metadata={"spec": Spec(**spec)})


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get("spec", Spec())


class ConfigError(ValueError):
    """A refused setting. ``str()`` is the operator's one line ("[sample] target_cells: must be at most
    10000 (got 99999)"); ``section``, ``key``, ``template`` and ``params`` let the page translate it."""

    def __init__(self, message: str, section: str = "", key: str = "", template: str = "",
                 params: dict | None = None):
        super().__init__(message)
        self.section, self.key, self.template, self.params = section, key, template, dict(params or {})


class RuleError(ValueError):
    """A cross-field rule broken: ``key`` must stay below ``other``. The loader names both in its message."""

    def __init__(self, key: str, other: str, value, limit):
        super().__init__(f"{key} must be below {other}")
        self.key, self.other, self.value, self.limit = key, other, value, limit


def below(obj, lower: str, higher: str) -> None:
    """The rule "``lower`` stays below ``higher``" (e.g. the darkest glass below the brightest cells)."""
    lo, hi = getattr(obj, lower), getattr(obj, higher)
    if not lo < hi:
        raise RuleError(lower, higher, lo, hi)


def _in_range(value, s: Spec) -> bool:
    if isinstance(value, float) and math.isnan(value):
        return False
    return ((s.ge is None or value >= s.ge) and (s.gt is None or value > s.gt)
            and (s.le is None or value <= s.le))


def check(obj) -> None:
    """The declared ranges and choices, for a section built in code (``QCSettings(max_edge_um=0)``); the
    loader checks the same declarations through pydantic first, with the operator's messages."""
    for f in dataclasses.fields(obj):
        s, value = spec_of(f), getattr(obj, f.name)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not _in_range(v, s):
                raise ValueError(f"{f.name} must be within the range its setting declares (got {v})")
        if s.choices and value not in s.choices:
            raise ValueError(f"{f.name} must be one of {', '.join(s.choices)} (got {value!r})")
