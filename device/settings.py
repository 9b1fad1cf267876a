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

from device.config import N_, AppConfig, ConfigError, config_from_dict, load_config
from device.imageio import write_atomic

# (section, key, label, kind) of what the Settings page edits field by field.
EDITABLE = [
    ("web", "clinic_name", "Clinic name (on reports)", "text"),
    ("web", "time_zone", "Time zone (e.g. Africa/Nairobi)", "text"),
    ("web", "language", "Default language", "choice:en,fr,ar"),
    ("sample", "target_cells", "Target white cells per sample", "int"),
    ("storage", "retention_days", "Delete records older than (days, 0 = keep)", "int"),
    ("storage", "min_free_mb", "Refuse new captures below this free space (MB)", "int"),
    ("server", "threads", "Web server threads (used at the next restart)", "int"),
    ("camera", "backend", "Camera", "choice:replay,opencv,picamera2"),
    ("camera", "folder", "Replay folder (replay camera)", "text"),
    ("camera", "device", "USB camera number (/dev/videoN)", "int"),
    ("camera", "preview_size", "Preview size, width x height (e.g. 640x480)", "size"),
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
    try:
        cfg = config_from_dict(_merge(base_cfg.to_dict(), over))
    except ConfigError as exc:  # e.g. a value saved by an older version that the schema now refuses
        raise ConfigError(f"{over_path} (saved on the Settings page): {exc}; fix or remove that line") from None
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
    check_box(new_cfg, cfg)
    write_atomic(path, tomli_w.dumps(merged_over).encode(), mode=0o640)
    return new_cfg


MAX_FLAGS_TEXT = 64 * 1024  # the flag-rule box: a few hundred rules at most


def check_box(cfg: AppConfig, old: AppConfig | None = None) -> None:
    """What the schema cannot know: values this box can actually run with. A free-space margin larger
    than the disk, or a replay folder that is missing or holds no images, would make every capture fail.
    Only values that change are checked (a small test disk below the default margin can still be edited)."""
    import shutil

    from device.imageio import IMAGE_SUFFIXES

    where = Path(cfg.data_dir)
    while not where.exists() and where != where.parent:  # not created yet: the disk it will be on
        where = where.parent
    total_mb = shutil.disk_usage(where).total // (1024 * 1024)
    if (old is None or cfg.storage.min_free_mb != old.storage.min_free_mb) and cfg.storage.min_free_mb >= total_mb:
        raise ConfigError(f"[storage] min_free_mb: must be below the disk's size ({total_mb} MB) "
                          f"(got {cfg.storage.min_free_mb})", "storage", "min_free_mb",
                          N_("must be below the size of the disk (%(mb)d MB)"), {"mb": total_mb})
    cam = cfg.camera
    changed = old is None or (cam.backend, cam.folder) != (old.camera.backend, old.camera.folder)
    if changed and cam.backend == "replay" and cam.folder:
        folder = Path(cam.folder)
        if not folder.is_dir():
            raise ConfigError(f"[camera] folder: {cam.folder} is not a folder on this box", "camera", "folder",
                              N_("%(path)s is not a folder on this box"), {"path": cam.folder})
        try:
            has_image = any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.iterdir())
        except OSError:
            has_image = False
        if not has_image:
            raise ConfigError(f"[camera] folder: {cam.folder} holds no images", "camera", "folder",
                              N_("%(path)s holds no images (.jpg, .png, .tif, .bmp)"), {"path": cam.folder})


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


def parse_form(form, cfg: AppConfig) -> dict:
    """Form fields -> a dict of sections; raises ConfigError naming the field. Only the text is read
    here; types and ranges are the schema's (device.config), checked on the whole result by save_overrides."""
    changes: dict = {}
    for section, key, label, kind in EDITABLE:
        raw = form.get(f"{section}.{key}")
        if raw is None:
            continue
        raw = raw.strip()
        try:
            if kind in ("int", "float"):
                value = _number(raw)
            elif kind == "size":
                value = _size(raw)
            elif kind.startswith("choice:"):
                if raw not in kind.split(":", 1)[1].split(","):
                    raise ValueError
                value = raw
            else:
                if len(raw) > 200:
                    raise ValueError
                value = raw
        except ValueError:
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
    for section, key, _, kind in EDITABLE:
        value = getattr(getattr(cfg, section), key)
        if kind == "size":
            value = "x".join(str(v) for v in value)
        typed = form.get(f"{section}.{key}") if form is not None else None
        out[f"{section}.{key}"] = typed if typed is not None else value
    return out


def flags_toml(cfg: AppConfig) -> str:
    return tomli_w.dumps({"sample": {"flags": cfg.to_dict()["sample"]["flags"]}})
