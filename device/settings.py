"""Settings changed on the page: kept in ``data_dir/settings.toml``, layered over the config file.

The config file (e.g. /etc/leukoscope/config.toml) stays as the installer wrote
it; what an administrator changes on the page lives beside the records, is
validated as a whole before it is saved, and survives updates.
"""
from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import tomli_w

from device.config import AppConfig, ConfigError, config_from_dict, load_config
from device.imageio import write_atomic

# (section, key, label, kind) of what the Settings page edits field by field.
EDITABLE = [
    ("web", "clinic_name", "Clinic name (on reports)", "text"),
    ("web", "time_zone", "Time zone (e.g. Africa/Nairobi)", "text"),
    ("web", "language", "Default language", "choice:en,fr,ar"),
    ("sample", "target_cells", "Target white cells per sample", "int"),
    ("storage", "retention_days", "Delete records older than (days, 0 = keep)", "int"),
    ("camera", "backend", "Camera", "choice:replay,opencv,picamera2"),
    ("camera", "folder", "Replay folder (replay camera)", "text"),
    ("camera", "device", "USB camera number (/dev/videoN)", "int"),
    ("camera", "um_per_pixel", "Pixel size, um per pixel (stage micrometer; used when a field has too few red cells)",
     "float"),
    ("qc", "max_edge_um", "Focus: widest acceptable cell edge (um)", "float"),
    ("qc", "min_background", "Minimum glass brightness (0-255)", "float"),
    ("qc", "max_cell_brightness", "Maximum cell brightness (0-255)", "float"),
    ("qc", "max_clipped", "Maximum clipped fraction of cell pixels", "float"),
    ("qc", "min_cell_fraction", "Minimum fraction of the field covered by cells (smear present)", "float"),
]


def overrides_path(data_dir: Path) -> Path:
    return Path(data_dir) / "settings.toml"


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def load_effective(config_path: str | Path | None, data_dir: str | Path | None = None) -> AppConfig:
    """The config file (``data_dir`` wins over its own), then the page's overrides on top."""
    base_cfg = load_config(config_path)
    if data_dir:
        base_cfg.storage.data_dir = str(data_dir)
    over_path = overrides_path(base_cfg.data_dir)
    try:
        over = _read(over_path)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{over_path}: not valid TOML ({exc}); fix or remove it") from None
    if not over:
        return base_cfg
    cfg = config_from_dict(_merge(base_cfg.to_dict(), over))
    cfg.storage.data_dir = base_cfg.storage.data_dir  # the overrides live in it; they cannot move it
    return cfg


def save_overrides(cfg: AppConfig, changes: dict) -> AppConfig:
    """Validate the whole result, then write the overrides file atomically; returns the new config."""
    path = overrides_path(cfg.data_dir)
    current = _read(path)
    merged_over = _merge(current, changes)
    new_cfg = config_from_dict(_merge(cfg.to_dict(), changes))
    # data_dir must not move under a running appliance
    new_cfg.storage.data_dir = cfg.storage.data_dir
    write_atomic(path, tomli_w.dumps(merged_over).encode(), mode=0o640)
    return new_cfg


def parse_form(form, cfg: AppConfig) -> dict:
    """Form fields -> a dict of sections; raises ConfigError naming the field."""
    changes: dict = {}
    for section, key, label, kind in EDITABLE:
        raw = form.get(f"{section}.{key}")
        if raw is None:
            continue
        raw = raw.strip()
        try:
            if kind == "int":
                value = int(raw)
            elif kind == "float":
                value = float(raw)
            elif kind.startswith("choice:"):
                if raw not in kind.split(":", 1)[1].split(","):
                    raise ValueError
                value = raw
            else:
                if len(raw) > 200:
                    raise ValueError
                value = raw
        except ValueError:
            raise ConfigError(f"{label}: {raw[:40]!r} is not a valid value") from None
        changes.setdefault(section, {})[key] = value
    flags = form.get("flags_toml")
    if flags is not None and flags.strip():
        try:
            parsed = tomllib.loads(flags)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Flag rules: not valid TOML ({exc})") from None
        if set(parsed) - {"sample"} or set(parsed.get("sample", {})) - {"flags"}:
            raise ConfigError("Flag rules: write only [[sample.flags]] tables here")
        changes.setdefault("sample", {})["flags"] = parsed.get("sample", {}).get("flags", [])
    return changes


def flags_toml(cfg: AppConfig) -> str:
    return tomli_w.dumps({"sample": {"flags": cfg.to_dict()["sample"]["flags"]}})
