"""Consistent backups while the appliance runs, and restoring them.

The database is copied with SQLite's online backup API (a consistent snapshot
even while captures commit), then exactly the image files that snapshot refers
to. Images are written before their rows commit and never changed afterwards,
so every file the snapshot names already exists in full.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

from device.imageio import write_atomic
from device.records.store import DataDirLock, Store, now

MANIFEST = "leukoscope-backup.json"


class BackupError(RuntimeError):
    pass


def backup(data_dir: Path, dest: Path) -> dict:
    data_dir, dest = Path(data_dir), Path(dest)
    db = data_dir / "leukoscope.db"
    if not db.exists():
        raise BackupError(f"no Leukoscope database in {data_dir}")
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: choose a new folder for the backup")
    dest.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    snap = sqlite3.connect(dest / "leukoscope.db")
    try:
        src.backup(snap)  # online, consistent, does not block the daemon's writers for long
    finally:
        src.close()
    rows = snap.execute("SELECT image_path FROM fields UNION SELECT crop_path FROM cells "
                        "UNION SELECT file_path FROM calibrations").fetchall()  # calibrations: their files too
    counts = {t: snap.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("samples", "fields", "cells", "audit", "users")}
    snap.close()
    copied, missing = 0, []
    for (rel,) in rows:
        src_file, dst_file = data_dir / rel, dest / rel
        dst_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(src_file, dst_file)
            copied += 1
        except FileNotFoundError:
            missing.append(rel)  # deleted (retention, an administrator) after the snapshot
    for extra in ("settings.toml", "secret_key", "models/current.lkb", "models/previous.lkb"):
        if (data_dir / extra).exists():
            (dest / extra).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data_dir / extra, dest / extra)
    manifest = {"created_at": now(), "source": str(data_dir), "counts": counts, "files": copied, "missing": missing}
    write_atomic(dest / MANIFEST, json.dumps(manifest, indent=2).encode(), mode=0o640)
    return manifest


def restore(src: Path, data_dir: Path, force: bool = False) -> dict:
    """Bring a backup back into ``data_dir``. Holds the data folder's lock throughout, so it is
    refused while the appliance runs, and the appliance cannot start in the middle of it."""
    src, data_dir = Path(src), Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(data_dir, purpose="restore")
    try:
        return _restore(src, data_dir, force)
    finally:
        lock.close()


def _restore(src: Path, data_dir: Path, force: bool) -> dict:
    if not (src / MANIFEST).exists() or not (src / "leukoscope.db").exists():
        raise BackupError(f"{src} is not a Leukoscope backup (no {MANIFEST})")
    check = sqlite3.connect(f"file:{src / 'leukoscope.db'}?mode=ro", uri=True)
    ok = check.execute("PRAGMA integrity_check").fetchone()[0]
    check.close()
    if ok != "ok":
        raise BackupError(f"the backup's database is damaged ({ok}); nothing was changed")
    if (data_dir / "leukoscope.db").exists() and not force:
        raise BackupError(f"{data_dir} already holds records; stop the appliance and pass --force to replace them")
    data_dir.mkdir(parents=True, exist_ok=True)
    # images and extras first, the database last: a crash leaves the old database in charge
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_file() and rel.parts[0] not in ("leukoscope.db", MANIFEST):
            write_atomic(data_dir / rel, path.read_bytes(), mode=0o640)
    for suffix in ("-wal", "-shm"):
        try:
            os.unlink(data_dir / f"leukoscope.db{suffix}")
        except FileNotFoundError:
            pass
    write_atomic(data_dir / "leukoscope.db", (src / "leukoscope.db").read_bytes(), mode=0o640)
    store = Store(data_dir)
    report = store.consistency_check(repair=True)
    store.audit("system", "restore", str(src), report.to_dict())
    store.close()
    return {"restored_from": str(src), "repair": report.to_dict(),
            "manifest": json.loads((src / MANIFEST).read_text())}
