"""The appliance's configuration: one typed object, loaded from a TOML file.

Every setting has a default that works, so ``leukoscope serve`` needs no file.
Unknown keys are refused with their section named, so a typo is not silently
ignored.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path

import tomli_w

from device.cells import CellFinderSettings
from device.qc import QCSettings
from device.sample import DEFAULT_RULES, FlagRule


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

    def field_settings(self):
        from device.pipeline import FieldSettings

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
    pass


def build_section(cls, raw: dict, where: str):
    """A dataclass from a TOML table: unknown keys and wrong types refused, naming the section."""
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"[{where}]: unknown setting(s) {unknown}; known: {sorted(known)}")
    values = {}
    for name, value in raw.items():
        default = getattr(cls(), name) if not is_dataclass(known[name].type) else None
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
    raw = _drop_retired(dict(raw))
    sections = {f.name: f for f in fields(AppConfig)}
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; known: {sorted(sections)}")
    cfg = AppConfig()
    for name, value in raw.items():
        cls = type(getattr(cfg, name))
        if name == "sample":
            value = dict(value)
            rules = value.pop("flags", None)
            section = build_section(SampleConfig, value, "sample")
            if rules is not None:
                try:
                    section.flags = [FlagRule(**r) for r in rules]
                except (TypeError, ValueError) as exc:
                    raise ConfigError(f"[[sample.flags]]: {exc}") from None
        else:
            section = build_section(cls, value, name)
        setattr(cfg, name, section)
    if cfg.camera.backend not in ("replay", "opencv", "picamera2"):
        raise ConfigError(f"[camera] backend: {cfg.camera.backend!r} is not one of replay, opencv, picamera2")
    if not 0.01 <= cfg.camera.um_per_pixel <= 2.0:
        raise ConfigError("[camera] um_per_pixel must be within 0.01..2.0 micrometres per pixel")
    if not 1 <= cfg.server.port <= 65535:
        raise ConfigError("[server] port must be within 1..65535")
    if cfg.sample.target_cells < 1:
        raise ConfigError("[sample] target_cells must be at least 1")
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


def commented_defaults() -> str:
    """Every setting with its default, commented out: the installer's /etc/leukoscope/config.toml.
    Uncomment a line to change it."""
    lines = ["# Leukoscope configuration. Every setting is shown with its default, commented out.",
             "# Uncomment and edit a line to change it; restart the service (systemctl restart leukoscope).",
             "# Settings changed on the page's Settings screen are kept in <data_dir>/settings.toml and win.", ""]
    for line in dumps(AppConfig()).splitlines():
        if not line.strip():
            lines.append("")
        elif line.startswith("["):
            lines.append(line if not line.startswith("[[") else "# " + line)
        else:
            lines.append("# " + line)
    return "\n".join(lines) + "\n"
