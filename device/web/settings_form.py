"""The Settings page's form: which settings it edits (generated from the sections' declarations), the typed
text read back into a dict of sections, and what each field shows.

A setting is on the page when its declaration has a label (``setting(..., label=N_("..."))``, device/schema.py);
types and ranges are checked by the config's schema on the whole result (device/settings.py save_overrides).
"""
from __future__ import annotations

import dataclasses
import tomllib
from typing import NamedTuple, get_type_hints

import tomli_w

from device.config import AppConfig, ConfigError
from device.schema import N_, spec_of

# The page shows every section that declares a labelled setting (within a section: the order of the declarations);
# this is only the order the page lays them out in: a section not named here follows the others.
PAGE_ORDER = ("web", "sample", "storage", "server", "camera", "qc")
MAX_FLAGS_TEXT = 64 * 1024  # the flag-rule box: a few hundred rules at most


class Editable(NamedTuple):
    section: str
    key: str
    label: str  # an N_() string, translated on the page
    kind: str  # "int", "float", "bool", "text", "size" or "choice:a,b,c"


BOOL_TEXT = {"true": True, "false": False}  # what the page's yes/no choice posts


def _kind(tp, choices: tuple[str, ...]) -> str:
    if choices:
        return "choice:" + ",".join(choices)
    return {bool: "bool", int: "int", float: "float", list[int]: "size"}.get(tp, "text")


def _page_sections(cfg: AppConfig) -> list[str]:
    labelled = [f.name for f in dataclasses.fields(cfg)
                if dataclasses.is_dataclass(getattr(cfg, f.name))
                and any(spec_of(g).label for g in dataclasses.fields(getattr(cfg, f.name)))]
    return sorted(labelled, key=lambda name: PAGE_ORDER.index(name) if name in PAGE_ORDER else len(PAGE_ORDER))


def editable(cfg: AppConfig | None = None) -> list[Editable]:
    """Every labelled setting, from the sections' declarations."""
    cfg = cfg or AppConfig()
    out = []
    for section in _page_sections(cfg):
        cls = type(getattr(cfg, section))
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            s = spec_of(f)
            if s.label:
                out.append(Editable(section, f.name, s.label, _kind(hints[f.name], s.choices)))
    return out


EDITABLE = editable()


def _declared(cfg: AppConfig, section: str, key: str):
    return spec_of({f.name: f for f in dataclasses.fields(getattr(cfg, section))}[key])


def _number(text: str):
    """Page text as a number, whole or not: the schema, not the form, decides what the setting accepts
    (so "1.5" threads gets the schema's "must be a whole number")."""
    try:
        return int(text)
    except ValueError:
        return float(text)  # ValueError for text that is no number at all


def _size(text: str) -> list:
    """ "640x480", "640 x 480" or "640, 480" -> [640, 480]; "" -> [] (the schema says if that is allowed)."""
    parts = [p for p in text.lower().replace("x", " ").replace(",", " ").split()]
    return [_number(p) for p in parts]


def _value(kind: str, raw: str, max_length: int | None):
    """One field's text as its kind reads it; ValueError (or KeyError) when it is no such value."""
    if kind in ("int", "float"):
        return _number(raw)
    if kind == "bool":
        return BOOL_TEXT[raw.lower()]
    if kind == "size":
        return _size(raw)
    if kind.startswith("choice:") and raw not in kind.split(":", 1)[1].split(","):
        raise ValueError(raw)
    if not kind.startswith("choice:") and max_length is not None and len(raw) > max_length:
        raise ValueError(raw)
    return raw


def parse_form(form, cfg: AppConfig) -> dict:
    """Form fields -> a dict of sections; raises ConfigError naming the field. Only the text is read
    here; types and ranges are the schema's (device.config), checked on the whole result by save_overrides."""
    changes: dict = {}
    for section, key, label, kind in editable(cfg):
        raw = form.get(f"{section}.{key}")
        if raw is None:
            continue
        raw = raw.strip()
        try:
            value = _value(kind, raw, _declared(cfg, section, key).max_length)
        except (ValueError, KeyError):
            raise ConfigError(f"{label}: {raw[:40]!r} is not a valid value", section, key,
                              N_("%(value)s is not a valid value"), {"value": repr(raw[:40])}) from None
        changes.setdefault(section, {})[key] = value
    flags = form.get("flags_toml")
    if flags is not None and len(flags) > MAX_FLAGS_TEXT:
        raise ConfigError(f"[sample] flags: {len(flags):,} characters; at most {MAX_FLAGS_TEXT:,}", "sample", "flags",
                          N_("at most %(n)d characters"), {"n": MAX_FLAGS_TEXT})
    if flags is not None and flags.strip():
        try:
            parsed = tomllib.loads(flags)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Flag rules: not valid TOML ({exc})") from None
        if set(parsed) - {"sample"} or set(parsed.get("sample", {})) - {"flags"}:
            raise ConfigError("Flag rules: write only [[sample.flags]] tables here")
        changes.setdefault("sample", {})["flags"] = parsed.get("sample", {}).get("flags", [])
    return changes


def form_values(cfg: AppConfig, form=None) -> dict:
    """What each field of the page shows: the setting in use, or after a refused save what was typed
    (so one bad value loses none of the others)."""
    out = {}
    for section, key, _, kind in editable(cfg):
        value = getattr(getattr(cfg, section), key)
        if kind == "size":
            value = "x".join(str(v) for v in value)
        elif kind == "bool":
            value = "true" if value else "false"
        typed = form.get(f"{section}.{key}") if form is not None else None
        out[f"{section}.{key}"] = typed if typed is not None else value
    return out


def flags_toml(cfg: AppConfig) -> str:
    return tomli_w.dumps({"sample": {"flags": cfg.to_dict()["sample"]["flags"]}})
