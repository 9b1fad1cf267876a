"""The appliance's configuration: one typed object, loaded from a TOML file.

Every setting has a default that works, so ``leukoscope serve`` needs no file.
Unknown keys are refused with their section named, so a typo is not silently
ignored. Each section is a dataclass declared once, in the module that uses it, with every
setting's range, choices and page label (device/schema.py); from it come the pydantic models that
check every value, whether from the config file or the Settings page, and the defaults dump
(``leukoscope config defaults``) with the same ranges.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Literal, get_type_hints

import tomli_w
from annotated_types import Interval, MaxLen
from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
)
from pydantic_core import PydanticCustomError

from device.analysis.cells import CellFinderSettings
from device.analysis.qc import QCSettings
from device.camera import CameraConfig
from device.records.counts import FlagRule, SampleConfig
from device.schema import N_, ConfigError, RuleError, Spec, check, setting, spec_of


# The page and report languages, each named in its own language: the catalogues in device/web/translations.
LANGUAGES = {"en": "English", "fr": "Français", "ar": "العربية"}


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # the LAN only when set here on purpose (e.g. "0.0.0.0")
    port: int = setting(8080, ge=1, le=65535)
    threads: int = setting(8, ge=1, le=64, label=N_("Web server threads (used at the next restart)"))


@dataclass
class ModelConfig:
    bundle: str = ""  # "" = the installed bundle (data_dir/models/current.lkb) or the bundled default
    threads: int = setting(1, ge=1, le=8)


@dataclass
class StorageConfig:
    data_dir: str = ""  # "" = $STATE_DIRECTORY, /var/lib/leukoscope as root, else ~/.local/share/leukoscope
    retention_days: int = setting(0, ge=0, le=36500,  # 0 = keep records for ever
                                  label=N_("Delete records older than (days, 0 = keep)"))
    min_free_mb: int = setting(50, ge=0, le=10_000_000, label=N_("Refuse new captures below this free space (MB)"))


@dataclass
class WebConfig:
    clinic_name: str = setting("Leukoscope", max_length=200, label=N_("Clinic name (on reports)"))
    max_failed_logins: int = setting(5, ge=1, le=100)
    lockout_minutes: int = setting(15, ge=1, le=1440)
    session_hours: int = setting(12, ge=1, le=168)
    # the box's time zone for dates on pages and reports (an IANA name, e.g. Africa/Nairobi)
    time_zone: str = setting("UTC", max_length=64, label=N_("Time zone (e.g. Africa/Nairobi)"))
    # the default page and report language; each user can choose their own
    language: str = setting("en", choices=tuple(LANGUAGES), label=N_("Default language"))

    def __post_init__(self):
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_zone: unknown time zone {self.time_zone!r} (use a name such as "
                             "'Africa/Nairobi' or 'UTC')") from None
        check(self)  # the language among LANGUAGES


@dataclass
class GpioConfig:
    button_pin: int = setting(0, ge=0, le=27)  # 0 = no capture push-button; else the BCM pin number


@dataclass
class DistrictConfig:
    """The district's Orthanc (issue 25): where finished samples are sent, with this box's account."""
    # DICOMweb root, e.g. "https://district.example.org/dicom-web" ("" = nothing is sent)
    url: str = setting("", max_length=300)
    username: str = setting("", max_length=100)
    password: str = setting("", max_length=200)
    ca_file: str = setting("", max_length=500)  # a PEM file trusting the district's certificate ("" = the system's authorities)
    send_patient: bool = False  # patient name, age and sex leave the box only when true (else a pseudonym)
    poll_seconds: int = setting(60, ge=1, le=86400)  # how often verdicts are fetched and the queue is retried at the latest
    retry_base_s: float = setting(5.0, gt=0, le=3600)  # first retry after a failure; doubles up to retry_max_s
    retry_max_s: int = setting(600, ge=1, le=86400)
    timeout_s: int = setting(30, ge=1, le=600)


@dataclass
class AppConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    qc: QCSettings = field(default_factory=QCSettings)
    cells: CellFinderSettings = field(default_factory=CellFinderSettings)
    sample: SampleConfig = field(default_factory=SampleConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    web: WebConfig = field(default_factory=WebConfig)
    gpio: GpioConfig = field(default_factory=GpioConfig)
    district: DistrictConfig = field(default_factory=DistrictConfig)

    def field_settings(self):
        from device.analysis.pipeline import FieldSettings

        return FieldSettings(self.cells, self.qc, self.camera.um_per_pixel)

    @property
    def data_dir(self) -> Path:
        if self.storage.data_dir:
            return Path(self.storage.data_dir).expanduser()
        return default_data_dir()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sample"]["flags"] = [asdict(r) for r in self.sample.flags]
        return d


def default_data_dir() -> Path:
    if os.environ.get("LEUKOSCOPE_DATA_DIR"):
        return Path(os.environ["LEUKOSCOPE_DATA_DIR"])
    if os.environ.get("STATE_DIRECTORY"):  # set by systemd's StateDirectory=
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    if os.geteuid() == 0:
        return Path("/var/lib/leukoscope")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "leukoscope"


# ---- The loader's pydantic models, built from each section's declarations (device/schema.py) -------
# A number without a declared range fails test_every_number_has_a_range.

def _size(lo: int, hi: int, allow_empty: bool):
    def two(v: list[int]) -> list[int]:
        if len(v) == 2 or (allow_empty and not v):
            return v
        raise PydanticCustomError("size", N_("give two whole numbers, width and height") if not allow_empty else
                                  N_("give two whole numbers, width and height, or nothing"))

    return Annotated[list[Annotated[StrictInt, Interval(ge=lo, le=hi)]], Field(max_length=2), AfterValidator(two)]


def _field_type(tp, s: Spec):
    """A setting's pydantic type: its Python type, strict (a TOML 1 is no true, 1.5 no whole number), and its
    declared range or choices."""
    if tp == list[int]:
        return _size(s.ge if s.ge is not None else s.gt, s.le, bool(s.empty))
    if s.choices:
        return Literal[s.choices]
    base = {bool: StrictBool, int: StrictInt, float: StrictFloat | StrictInt, str: StrictStr}.get(tp, tp)
    if s.max_length is not None:
        return Annotated[base, MaxLen(s.max_length)]
    if (s.ge, s.gt, s.le) != (None, None, None):
        return Annotated[base, Interval(ge=s.ge, gt=s.gt, le=s.le)]
    return base


@functools.cache
def _model(cls, section: str):
    hints = get_type_hints(cls)
    required = {f.name for f in fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    spec = {f.name: (_field_type(hints[f.name], spec_of(f)), ... if f.name in required else None)
            for f in fields(cls) if f.name != "flags"}
    return create_model(f"{section}_schema", __config__=ConfigDict(extra="forbid"), **spec)


# English templates of the schema's messages (translated on the page; see device/web/words.py)
_MESSAGES = {
    "greater_than_equal": (N_("must be at least %(limit)s"), "ge"),
    "less_than_equal": (N_("must be at most %(limit)s"), "le"),
    "greater_than": (N_("must be more than %(limit)s"), "gt"),
    "less_than": (N_("must be less than %(limit)s"), "lt"),
    "int_type": (N_("must be a whole number"), None),
    "float_type": (N_("must be a number"), None),
    "bool_type": (N_("must be true or false"), None),
    "string_type": (N_("must be text"), None),
    "missing": (N_("is required"), None),
    "list_type": (N_("must be a list of numbers, e.g. [640, 480]"), None),
    "too_long": (N_("must be at most %(limit)s long"), "max_length"),
    "literal_error": (N_("must be one of %(limit)s"), "expected"),
}


def _error_from(exc, section: str) -> ConfigError:
    """The first problem pydantic found, as one ConfigError naming section and key."""
    err = exc.errors(include_url=False)[0]
    # union members add their own names to the location (e.g. "int", "float"): keep the field's
    key = str(err["loc"][0]) if err["loc"] else ""
    kind = err["type"]
    if kind in ("int_type", "float_type") and "float" in str(err["loc"]):
        kind = "float_type"
    if kind == "int_from_float":
        kind = "int_type"
    template, ctx_key = _MESSAGES.get(kind, (err.get("msg", "not valid"), None))
    if kind == "size":
        template = err["msg"]
    params = {"limit": err.get("ctx", {}).get(ctx_key, "")} if ctx_key else {}
    got = err.get("input")
    where = f"[{section}] {key}".strip()
    text = (template % params) if params else template
    if not isinstance(got, dict):
        text += f" (got {str(got)[:40]!r})" if isinstance(got, str) else f" (got {str(got)[:40]})"
    return ConfigError(f"{where}: {text}", section, key, template, params)


def check_section(cls, raw: dict, where: str):
    """A section's dataclass from a TOML table, checked against the schema: unknown keys, wrong types
    and out-of-range values refused, naming the section and key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table", where)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"[{where}]: unknown setting(s) {unknown}; known: {sorted(known)}", where)
    try:
        model = _model(cls, where).model_validate({k: v for k, v in raw.items() if k != "flags"})
    except ValidationError as exc:
        raise _error_from(exc, where) from None
    hints = get_type_hints(cls)
    values = {k: float(getattr(model, k)) if hints[k] is float else getattr(model, k) for k in raw if k != "flags"}
    if "flags" in raw:
        values["flags"] = _flag_rules(raw["flags"])
    try:
        return cls(**values)
    except RuleError as exc:  # a cross-field rule of the section (device/schema.py below())
        tmpl = N_("must be below %(other)s (%(value)s)")
        raise ConfigError(f"[{where}] {exc.key}: must be below {exc.other} ({exc.limit}) (got {exc.value})",
                          where, exc.key, tmpl, {"other": exc.other, "value": exc.limit}) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}", where) from None


MAX_FLAG_RULES = 100


def _flag_rules(rules) -> list[FlagRule]:
    if not isinstance(rules, list):
        raise ConfigError("[[sample.flags]] must be a list of tables", "sample", "flags")
    if len(rules) > MAX_FLAG_RULES:  # each capture checks every rule and the page lists them all
        raise ConfigError(f"[sample] flags: at most {MAX_FLAG_RULES} rules (got {len(rules)})", "sample", "flags",
                          N_("at most %(n)d rules (got %(got)d)"), {"n": MAX_FLAG_RULES, "got": len(rules)})
    out = []
    for i, rule in enumerate(rules, 1):
        where = f"sample.flags #{i}"
        try:
            out.append(check_section(FlagRule, rule, "flags"))
        except ConfigError as exc:
            # named by its place in the list, so the page and the journal point at the right table
            raise ConfigError(str(exc).replace("[flags]", f"[{where}]", 1), where, exc.key,
                              exc.template, exc.params) from None
    return out


# Settings of earlier versions whose meaning is gone (sizes as fractions of the frame,
# QC on the whole frame): dropped with a warning, so an updated box still starts.
RETIRED = {"qc": {"min_focus", "min_brightness", "max_brightness", "min_stain_fraction"},
           "cells": {"min_area_fraction", "join_fraction", "min_box_fraction"}}


def _drop_retired(raw: dict) -> dict:
    import logging

    out = dict(raw)
    for section, keys in RETIRED.items():
        if isinstance(out.get(section), dict) and keys & set(out[section]):
            gone = sorted(keys & set(out[section]))
            logging.getLogger(__name__).warning("[%s] %s: retired settings ignored (physical sizes and "
                                                "cell-based QC replaced them)", section, ", ".join(gone))
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


def config_from_dict(raw: dict) -> AppConfig:
    """The whole configuration from a TOML document (the config file, or it merged with the page's
    overrides), every section checked against the schema."""
    raw = _drop_retired(dict(raw))
    sections = {f.name for f in fields(AppConfig)}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: {sorted(sections)}")
    cfg = AppConfig()
    for name, value in raw.items():
        setattr(cfg, name, check_section(type(getattr(cfg, name)), value, name))
    return cfg


def load_config(path: str | Path | None = None) -> AppConfig:
    if path is None:
        return AppConfig()
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    return config_from_dict(raw)


def dumps(cfg: AppConfig) -> str:
    return tomli_w.dumps(cfg.to_dict())


def _range_note(f: dataclasses.Field) -> str:
    """A setting's declared range, for the defaults file ("1..65535")."""
    s = spec_of(f)
    if s.le is None:
        return ""
    if f.type in ("list[int]", list[int]):
        return f"  # width, height: {s.ge}..{s.le} each" + (f" ([] = {s.empty})" if s.empty else "")
    if s.gt is not None:
        return f"  # more than {s.gt}, at most {s.le}"
    return f"  # {s.ge}..{s.le}"


def commented_defaults() -> str:
    """Every setting with its default and its range, commented out: the installer's
    /etc/leukoscope/config.toml. Uncomment a line to change it."""
    lines = ["# Leukoscope configuration. Every setting is shown with its default, commented out.",
             "# Uncomment and edit a line to change it; restart the service (systemctl restart leukoscope).",
             "# Settings changed on the page's Settings screen are kept in <data_dir>/settings.toml and win.", ""]
    defaults = AppConfig().to_dict()
    for section, values in defaults.items():
        lines.append(f"[{section}]")
        declared = {f.name: f for f in fields(type(getattr(AppConfig(), section)))}
        for key, value in values.items():
            if key == "flags":
                continue
            text = tomli_w.dumps({key: value}).strip() if not isinstance(value, list) else \
                f"{key} = [{', '.join(str(v) for v in value)}]"
            lines.append(f"# {text}{_range_note(declared[key])}")
        lines.append("")
        if section == "sample":  # the default flag rules, as tables to copy and edit
            for line in tomli_w.dumps({"sample": {"flags": values["flags"]}}).splitlines():
                lines.append("# " + line if line.strip() else "")
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
