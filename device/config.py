"""The appliance's configuration: one typed object, loaded from a TOML file.

Every setting has a default that works, so ``leukoscope serve`` needs no file.
Unknown keys are refused with their section named, so a typo is not silently
ignored. Every value goes through one schema (types and ranges: ``LIMITS`` and ``ORDER``
below, checked by pydantic) whether it comes from the config file or the Settings page,
and the defaults dump (``leukoscope config defaults``) prints the same ranges.
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
from device.records.counts import DEFAULT_RULES, FlagRule


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # the LAN only when set here on purpose (e.g. "0.0.0.0")
    port: int = 8080
    threads: int = 8


@dataclass
class CameraConfig:
    backend: str = "replay"  # "replay", "opencv" or "picamera2"
    folder: str = ""  # replay: a folder of field images ("" = the bundled BCCD samples)
    loop: bool = True
    device: int = 0  # opencv: /dev/videoN
    width: int = 1920
    height: int = 1080
    still_size: list[int] = field(default_factory=list)  # picamera2: [] = the sensor's full size
    preview_size: list[int] = field(default_factory=lambda: [640, 480])
    # Pixel size in the sample plane (micrometres per pixel), measured once with a stage
    # micrometer. Each field's own red cells are the ruler; this value is used when a
    # field has too few of them. The default suits a 100x objective on a typical camera.
    um_per_pixel: float = 0.1


@dataclass
class ModelConfig:
    bundle: str = ""  # "" = the installed bundle (data_dir/models/current.lkb) or the bundled default
    threads: int = 1


@dataclass
class SampleConfig:
    target_cells: int = 100
    flags: list[FlagRule] = field(default_factory=lambda: list(DEFAULT_RULES))


@dataclass
class StorageConfig:
    data_dir: str = ""  # "" = $STATE_DIRECTORY, /var/lib/leukoscope as root, else ~/.local/share/leukoscope
    min_free_mb: int = 50
    retention_days: int = 0  # 0 = keep records for ever


@dataclass
class WebConfig:
    clinic_name: str = "Leukoscope"
    max_failed_logins: int = 5
    lockout_minutes: int = 15
    session_hours: int = 12
    time_zone: str = "UTC"  # the box's time zone for dates on pages and reports (an IANA name, e.g. Africa/Nairobi)
    language: str = "en"  # the default page and report language; each user can choose their own

    def __post_init__(self):
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time_zone: unknown time zone {self.time_zone!r} (use a name such as "
                             "'Africa/Nairobi' or 'UTC')") from None
        if self.language not in ("en", "fr", "ar"):
            raise ValueError(f"language: {self.language!r} is not available (en, fr, ar)")


@dataclass
class GpioConfig:
    button_pin: int = 0  # 0 = no capture push-button; else the BCM pin number


@dataclass
class DistrictConfig:
    """The district's Orthanc (issue 25): where finished samples are sent, with this box's account."""
    url: str = ""  # DICOMweb root, e.g. "https://district.example.org/dicom-web" ("" = nothing is sent)
    username: str = ""
    password: str = ""
    ca_file: str = ""  # a PEM file trusting the district's certificate ("" = the system's authorities)
    send_patient: bool = False  # patient name, age and sex leave the box only when true (else a pseudonym)
    poll_seconds: int = 60  # how often verdicts are fetched and the queue is retried at the latest
    retry_base_s: float = 5.0  # first retry after a failure; doubles up to retry_max_s
    retry_max_s: int = 600
    timeout_s: int = 30


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


class ConfigError(ValueError):
    """A refused setting. ``str()`` is the operator's one line ("[sample] target_cells: must be at most
    10000 (got 99999)"); ``section``, ``key``, ``template`` and ``params`` let the page translate it."""

    def __init__(self, message: str, section: str = "", key: str = "", template: str = "",
                 params: dict | None = None):
        super().__init__(message)
        self.section, self.key, self.template, self.params = section, key, template, dict(params or {})


def N_(text: str) -> str:
    """Marks a message for the translation catalogue; translated where it is shown (the Settings page)."""
    return text


# ---- The schema: every setting's type and range, in one table --------------------------------------
# Each section is a plain dataclass (attribute access everywhere else); its pydantic model is built from
# the dataclass's own fields plus the limits below, so a new field cannot escape type checking, and a
# number without a limit here fails test_every_number_has_a_range.

def _size(lo: int, hi: int, allow_empty: bool):
    def two(v: list[int]) -> list[int]:
        if len(v) == 2 or (allow_empty and not v):
            return v
        raise PydanticCustomError("size", N_("give two whole numbers, width and height") if not allow_empty else
                                  N_("give two whole numbers, width and height, or nothing"))

    return Annotated[list[Annotated[StrictInt, Interval(ge=lo, le=hi)]], Field(max_length=2), AfterValidator(two)]


# (ge, le) closed ranges; gt for "positive" floats (a zero size means nothing)
LIMITS: dict[str, dict] = {
    "server": {"port": (1, 65535), "threads": (1, 64)},
    "camera": {"device": (0, 63), "width": (64, 10000), "height": (64, 10000), "um_per_pixel": (0.01, 2.0),
               "preview_size": ("size", 64, 4096, False), "still_size": ("size", 64, 10000, True),
               "backend": ("choice", "replay", "opencv", "picamera2")},
    "model": {"threads": (1, 8)},
    "qc": {"max_edge_um": ("gt", 0, 10), "min_background": (0, 255), "max_cell_brightness": (0, 255),
           "max_clipped": (0, 1), "min_cell_fraction": (0, 1), "max_cell_fraction": (0, 1), "min_contrast": (0, 255)},
    "cells": {"threshold": (0, 255), "min_threshold": (0, 255), "min_nucleus_um2": ("gt", 0, 1000),
              "typical_nucleus_um2": ("gt", 0, 1000), "join_um": ("gt", 0, 20), "open_um": ("gt", 0, 20),
              "cell_scale": (1, 5), "min_box_um": ("gt", 0, 100), "split_ratio": (1, 20), "max_cells": (1, 1000),
              "working_um_per_px": (0.05, 1.0), "edge_margin": (0, 100)},
    "sample": {"target_cells": (1, 10000)},
    "storage": {"min_free_mb": (0, 10_000_000), "retention_days": (0, 36500)},
    "web": {"max_failed_logins": (1, 100), "lockout_minutes": (1, 1440), "session_hours": (1, 168),
            "language": ("choice", "en", "fr", "ar"), "clinic_name": ("text", 200)},
    "gpio": {"button_pin": (0, 27)},
    "district": {"url": ("text", 300), "username": ("text", 100), "password": ("text", 200), "ca_file": ("text", 500),
                 "poll_seconds": (1, 86400), "retry_base_s": ("gt", 0, 3600), "retry_max_s": (1, 86400),
                 "timeout_s": (1, 600)},
    "flags": {"level": ("choice", "review", "refer"), "min_count": (0, 10000), "min_fraction": (0, 1),
              "message": ("text", 300), "category": ("text", 60)},
}
# (lower, higher): the first must stay below the second
ORDER = {"qc": [("min_background", "max_cell_brightness"), ("min_cell_fraction", "max_cell_fraction")],
         "cells": [("min_nucleus_um2", "typical_nucleus_um2")]}


def _field_type(tp, limit):
    base = {bool: StrictBool, int: StrictInt, float: StrictFloat, str: StrictStr}.get(tp, tp)
    if tp is float:  # a whole number is a fine float in TOML ("min_background = 70")
        base = StrictFloat | StrictInt
    if limit is None:
        return base
    kind = limit[0]
    if kind == "size":
        return _size(*limit[1:])
    if kind == "choice":
        return Literal[limit[1:]]
    if kind == "text":
        return Annotated[StrictStr, MaxLen(limit[1])]
    if kind == "gt":
        return Annotated[base, Interval(gt=limit[1], le=limit[2])]
    return Annotated[base, Interval(ge=limit[0], le=limit[1])]


@functools.cache
def _model(cls, section: str):
    hints = get_type_hints(cls)
    limits = LIMITS.get(section, {})
    required = {f.name for f in fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    spec = {f.name: (_field_type(hints[f.name], limits.get(f.name)), ... if f.name in required else None)
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
    merged = {**{f.name: getattr(cls(), f.name) for f in fields(cls)}, **values} if where in ORDER else {}
    for lower, higher in ORDER.get(where, []):
        if not merged[lower] < merged[higher]:
            tmpl = N_("must be below %(other)s (%(value)s)")
            raise ConfigError(f"[{where}] {lower}: must be below {higher} ({merged[higher]}) (got {merged[lower]})",
                              where, lower, tmpl, {"other": higher, "value": merged[higher]})
    if "flags" in raw:
        values["flags"] = _flag_rules(raw["flags"])
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}", where) from None


def build_section(cls, raw: dict, where: str):
    """A dataclass from a TOML table, types checked loosely: training recipes only (the appliance's own
    settings go through the schema, ``check_section``)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"[{where}]: unknown setting(s) {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in raw.items():
        default = getattr(cls(), name) if not dataclasses.is_dataclass(known[name].type) else None
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"[{where}] {name}: expected true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"[{where}] {name}: expected a number, got {value!r}")
            value = type(default)(value) if isinstance(default, float) or float(value).is_integer() else value
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"[{where}] {name}: expected text, got {value!r}")
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}]: {exc}") from None


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


def _range_note(limit) -> str:
    """The schema's range of a number, for the defaults file ("1..65535")."""
    if not limit or limit[0] in ("choice", "text"):
        return ""
    if limit[0] == "size":
        return f"  # width, height: {limit[1]}..{limit[2]} each" + (" ([] = the sensor's full size)" if limit[3] else "")
    if limit[0] == "gt":
        return f"  # more than {limit[1]}, at most {limit[2]}"
    return f"  # {limit[0]}..{limit[1]}"


def commented_defaults() -> str:
    """Every setting with its default and its range, commented out: the installer's
    /etc/leukoscope/config.toml. Uncomment a line to change it."""
    lines = ["# Leukoscope configuration. Every setting is shown with its default, commented out.",
             "# Uncomment and edit a line to change it; restart the service (systemctl restart leukoscope).",
             "# Settings changed on the page's Settings screen are kept in <data_dir>/settings.toml and win.", ""]
    defaults = AppConfig().to_dict()
    for section, values in defaults.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if key == "flags":
                continue
            text = tomli_w.dumps({key: value}).strip() if not isinstance(value, list) else \
                f"{key} = [{', '.join(str(v) for v in value)}]"
            lines.append(f"# {text}{_range_note(LIMITS.get(section, {}).get(key))}")
        lines.append("")
        if section == "sample":  # the default flag rules, as tables to copy and edit
            for line in tomli_w.dumps({"sample": {"flags": values["flags"]}}).splitlines():
                lines.append("# " + line if line.strip() else "")
            lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
