"""The config's layers: the config file, then the settings changed on the page, kept in
``data_dir/settings.toml`` (the page's form itself is device/web/settings_form.py).

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
from device.schema import N_


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


def check_box(cfg: AppConfig, old: AppConfig | None = None) -> None:
    """What the schema cannot know: values this box can actually run with. A free-space margin larger
    than the disk, or a camera setting this box cannot honour (each back-end's own check: a replay folder that is
    missing or holds no images), would make every capture fail. Only values that change are checked (a small test disk below the default margin can still be edited)."""
    import shutil

    from device.camera import backends

    where = Path(cfg.data_dir)
    while not where.exists() and where != where.parent:  # not created yet: the disk it will be on
        where = where.parent
    total_mb = shutil.disk_usage(where).total // (1024 * 1024)
    if (old is None or cfg.storage.min_free_mb != old.storage.min_free_mb) and cfg.storage.min_free_mb >= total_mb:
        raise ConfigError(f"[storage] min_free_mb: must be below the disk's size ({total_mb} MB) "
                          f"(got {cfg.storage.min_free_mb})", "storage", "min_free_mb",
                          N_("must be below the size of the disk (%(mb)d MB)"), {"mb": total_mb})
    cam = cfg.camera
    changed = old is None or cam.backend != old.camera.backend or cam.options() != old.camera.options()
    check = backends()[cam.backend].check
    if changed and check is not None:  # what the chosen back-end needs of this box (a replay folder with images)
        check(cam.options())
