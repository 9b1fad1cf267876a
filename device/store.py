"""Records on the box: SQLite (WAL, foreign keys, versioned migrations) plus image files.

Every image is written atomically (temporary file, fsync, rename) before the
row that points to it commits, so after a power cut a row never points to a
missing or half-written file. Files without rows (written, then the power
went before the commit) are found and removed by ``consistency_check``.
"""
from __future__ import annotations

import errno
import json
import shutil
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from device.imageio import write_atomic

MIGRATIONS = [
    # 1: the first schema
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL UNIQUE COLLATE NOCASE,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'operator')),
        active INTEGER NOT NULL DEFAULT 1,
        failed_logins INTEGER NOT NULL DEFAULT 0,
        locked_until TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE samples (
        id INTEGER PRIMARY KEY,
        sample_code TEXT NOT NULL,
        patient_name TEXT NOT NULL DEFAULT '',
        patient_age TEXT NOT NULL DEFAULT '',
        patient_sex TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT '',
        operator_id INTEGER REFERENCES users(id),
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'finished')),
        target INTEGER NOT NULL DEFAULT 100,
        model_name TEXT NOT NULL DEFAULT '',
        model_sha256 TEXT NOT NULL DEFAULT '',
        result_json TEXT,
        created_at TEXT NOT NULL,
        finished_at TEXT
    );
    CREATE INDEX samples_code ON samples(sample_code);
    CREATE INDEX samples_created ON samples(created_at);
    CREATE TABLE fields (
        id INTEGER PRIMARY KEY,
        sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
        image_path TEXT NOT NULL,
        captured_at TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT '',
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        qc_ok INTEGER NOT NULL,
        qc_message TEXT NOT NULL,
        qc_json TEXT NOT NULL,
        analysis_ms REAL
    );
    CREATE INDEX fields_sample ON fields(sample_id);
    CREATE TABLE cells (
        id INTEGER PRIMARY KEY,
        field_id INTEGER NOT NULL REFERENCES fields(id) ON DELETE CASCADE,
        sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
        x1 INTEGER NOT NULL, y1 INTEGER NOT NULL, x2 INTEGER NOT NULL, y2 INTEGER NOT NULL,
        crop_path TEXT NOT NULL,
        label TEXT NOT NULL,
        category TEXT NOT NULL,
        probability REAL NOT NULL,
        probabilities_json TEXT NOT NULL,
        flag TEXT,
        operator_label TEXT,
        reviewer_id INTEGER REFERENCES users(id),
        reviewed_at TEXT
    );
    CREATE INDEX cells_sample ON cells(sample_id);
    CREATE INDEX cells_field ON cells(field_id);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        username TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_at ON audit(at);
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: server-side sessions (revocable), sign-in throttling, per-user language, the sample's sign-off trail
    """
    CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        client TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_user ON sessions(user_id);
    CREATE TABLE login_failures (
        key TEXT PRIMARY KEY,
        count INTEGER NOT NULL,
        window_start TEXT NOT NULL,
        locked_until TEXT,
        audit_id INTEGER
    );
    ALTER TABLE users ADD COLUMN language TEXT NOT NULL DEFAULT '';
    ALTER TABLE samples ADD COLUMN finished_by TEXT;
    ALTER TABLE samples ADD COLUMN verified_by TEXT;
    ALTER TABLE samples ADD COLUMN reopened_at TEXT;
    ALTER TABLE samples ADD COLUMN reopened_by TEXT;
    ALTER TABLE samples ADD COLUMN reopen_reason TEXT
    """,
]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StorageFull(OSError):
    """Not enough free space to store a capture; the message is for the operator."""


@dataclass
class RepairReport:
    orphan_files_removed: list[str]
    rows_without_files: list[str]
    temp_files_removed: list[str]
    integrity: str

    @property
    def repaired(self) -> int:
        return len(self.orphan_files_removed) + len(self.rows_without_files) + len(self.temp_files_removed)

    def to_dict(self) -> dict:
        return {"integrity": self.integrity, "orphan_files_removed": self.orphan_files_removed,
                "rows_without_files": self.rows_without_files, "temp_files_removed": self.temp_files_removed}


class Store:
    """One SQLite database and an images folder under ``data_dir``."""

    def __init__(self, data_dir: str | Path, min_free_mb: int = 50):
        self.data_dir = Path(data_dir)
        self.images = self.data_dir / "images"
        self.images.mkdir(parents=True, exist_ok=True)
        self.db_path = self.data_dir / "leukoscope.db"
        self.min_free_mb = min_free_mb
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self.migrate()

    # -- connections -------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed capture survives a power cut (SD cards lose data with less).
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self):
        conn = self.connect()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def migrate(self) -> int:
        conn = self.connect()
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(f"database {self.db_path} is schema version {version}, newer than this software "
                               f"({len(MIGRATIONS)}); install the matching Leukoscope version")
        for i in range(version, len(MIGRATIONS)):
            with self.transaction() as tx:
                for stmt in (s.strip() for s in MIGRATIONS[i].split(";")):
                    if stmt:
                        tx.execute(stmt)
                tx.execute(f"PRAGMA user_version = {i + 1}")
        return len(MIGRATIONS)

    # -- files -------------------------------------------------------------
    def check_space(self, needed_bytes: int = 0) -> None:
        free = shutil.disk_usage(self.data_dir).free
        if free - needed_bytes < self.min_free_mb * 1024 * 1024:
            raise StorageFull(errno.ENOSPC, f"storage almost full ({free // (1024 * 1024)} MB free): "
                                            "export and delete old samples before capturing more")

    def write_file(self, rel: str, data: bytes) -> str:
        try:
            write_atomic(self.data_dir / rel, data, mode=0o640)  # patient images: not world-readable
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(exc.errno, "storage full: the capture was not saved; export and delete old samples") from None
            raise
        return rel

    def path(self, rel: str) -> Path:
        """Resolve a stored relative path, refusing anything outside the data folder."""
        p = (self.data_dir / rel).resolve()
        if self.data_dir.resolve() not in p.parents:
            raise ValueError("path outside the data folder")
        return p

    def new_name(self, sample_id: int, suffix: str) -> str:
        return f"images/{sample_id}/{uuid.uuid4().hex}{suffix}"

    def remove_files(self, rels) -> None:
        for rel in rels:
            try:
                self.path(rel).unlink()
            except (FileNotFoundError, ValueError):
                pass

    # -- audit -------------------------------------------------------------
    def audit(self, username: str, action: str, target: str = "", detail: str | dict = "", conn=None) -> None:
        if isinstance(detail, dict):
            detail = json.dumps(detail, sort_keys=True)
        sql = "INSERT INTO audit (at, username, action, target, detail) VALUES (?, ?, ?, ?, ?)"
        if conn is not None:
            conn.execute(sql, (now(), username, action, target, detail))
        else:
            with self.transaction() as tx:
                tx.execute(sql, (now(), username, action, target, detail))

    # -- start-up check ----------------------------------------------------
    def consistency_check(self, repair: bool = True) -> RepairReport:
        conn = self.connect()
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        referenced = {r[0] for r in conn.execute("SELECT image_path FROM fields UNION SELECT crop_path FROM cells")}
        temp_removed, orphans = [], []
        for p in self.images.rglob("*"):
            if not p.is_file():
                continue
            rel = p.relative_to(self.data_dir).as_posix()
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                temp_removed.append(rel)
            elif rel not in referenced:
                orphans.append(rel)
        missing_rows = []
        for table, col in (("cells", "crop_path"), ("fields", "image_path")):
            for row in conn.execute(f"SELECT id, {col} FROM {table}"):
                if not (self.data_dir / row[1]).is_file():
                    missing_rows.append(f"{table}:{row[0]}:{row[1]}")
        if repair:
            self.remove_files(temp_removed + orphans)
            if missing_rows:
                with self.transaction() as tx:
                    for item in missing_rows:
                        table, rid, _ = item.split(":", 2)
                        tx.execute(f"DELETE FROM {table} WHERE id = ?", (int(rid),))
            report = RepairReport(orphans, missing_rows, temp_removed, integrity)
            if report.repaired:
                self.audit("system", "startup-repair", "", report.to_dict())
            return report
        return RepairReport(orphans, missing_rows, temp_removed, integrity)
