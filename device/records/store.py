"""Records on the box: SQLite (WAL, foreign keys, versioned migrations) plus image files.

Every image is written atomically (temporary file, fsync, rename) before the
row that points to it commits, so after a power cut a row never points to a
missing or half-written file. Files without rows (written, then the power
went before the commit) are found by ``consistency_check`` and moved to a
quarantine folder, never deleted: a database restored later may still claim them.

The appliance holds an exclusive lock on its data folder, so a second server
(or a restore) cannot run its start-up repair against live records.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import sys
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from device.imageio import write_atomic

log = logging.getLogger("leukoscope.store")
LOCK_NAME = "leukoscope.lock"
RESERVE_NAME = "reserve.bin"
# Below this much free space the reserve is released: room for a few sign-ins and deletions.
RESERVE_ROOM = 1024 * 1024
QUARANTINE = "quarantine"
QUARANTINE_MAX_BYTES = 512 * 1024 * 1024

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
    # 3 (issue 12): the model that classified each field; a sample may span a model change
    """
    ALTER TABLE fields ADD COLUMN model_name TEXT NOT NULL DEFAULT '';
    ALTER TABLE fields ADD COLUMN model_version TEXT NOT NULL DEFAULT '';
    ALTER TABLE fields ADD COLUMN model_sha256 TEXT NOT NULL DEFAULT '';
    """,
    # 4 (issue 23): site calibration. Each cell keeps its embedding (float16) so a calibration never needs the
    # camera again; who decided a cell and in which role (only a qualified reviewer's blast may teach the box);
    # the calibration that classified each field; the calibrations themselves (versioned, decided, rolled back)
    """
    ALTER TABLE users ADD COLUMN qualified INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE cells ADD COLUMN embedding BLOB;
    ALTER TABLE cells ADD COLUMN model_probabilities BLOB;
    ALTER TABLE cells ADD COLUMN reviewer_role TEXT;
    ALTER TABLE fields ADD COLUMN calibration_id INTEGER;
    ALTER TABLE fields ADD COLUMN calibration_name TEXT NOT NULL DEFAULT '';
    CREATE TABLE calibrations (
        id INTEGER PRIMARY KEY,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        bundle_name TEXT NOT NULL,
        bundle_sha256 TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('proposed', 'active', 'rejected', 'retired')),
        n_cells INTEGER NOT NULL,
        n_samples INTEGER NOT NULL,
        file_path TEXT NOT NULL,
        file_sha256 TEXT NOT NULL,
        figures_json TEXT NOT NULL,
        previous_id INTEGER REFERENCES calibrations(id),
        decided_by TEXT,
        decided_at TEXT
    );
    CREATE INDEX calibrations_bundle ON calibrations(bundle_sha256, status)
    """,
    # 5 (issue 25): the district: the outgoing queue (one row per finish, filled in the finish's own transaction),
    # verdicts received from the district's experts, and the experts' cell labels (qualified-reviewer decisions)
    """
    CREATE TABLE district_outbox (
        id INTEGER PRIMARY KEY,
        sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
        revision INTEGER NOT NULL,
        queued_at TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'waiting' CHECK (state IN ('waiting', 'sent', 'error', 'superseded')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_try_at TEXT NOT NULL,
        last_try_at TEXT,
        sent_at TEXT,
        error TEXT,
        bytes INTEGER,
        study_uid TEXT,
        UNIQUE (sample_id, revision)
    );
    CREATE INDEX district_outbox_due ON district_outbox(state, next_try_at);
    CREATE TABLE district_verdicts (
        id INTEGER PRIMARY KEY,
        sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
        sop_uid TEXT NOT NULL UNIQUE,
        expert TEXT NOT NULL,
        role TEXT NOT NULL,
        verdict TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        blasts_confirmed INTEGER NOT NULL DEFAULT 0,
        signed_at TEXT NOT NULL,
        received_at TEXT NOT NULL
    );
    CREATE INDEX district_verdicts_sample ON district_verdicts(sample_id);
    CREATE TABLE qualified_labels (
        id INTEGER PRIMARY KEY,
        cell_id INTEGER NOT NULL REFERENCES cells(id) ON DELETE CASCADE,
        sample_id INTEGER NOT NULL REFERENCES samples(id) ON DELETE CASCADE,
        verdict_id INTEGER NOT NULL REFERENCES district_verdicts(id) ON DELETE CASCADE,
        label TEXT NOT NULL,
        reviewer TEXT NOT NULL,
        role TEXT NOT NULL,
        source TEXT NOT NULL DEFAULT 'district',
        decided_at TEXT NOT NULL,
        UNIQUE (cell_id, verdict_id)
    );
    CREATE INDEX qualified_labels_sample ON qualified_labels(sample_id)
    """,
]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class StorageFull(OSError):
    """Not enough free space to store a capture; the message is for the operator."""


class StoreError(RuntimeError):
    """The records cannot be used as they are; the message tells the operator what to do."""


class StoreLocked(StoreError):
    pass


class StoreDamaged(StoreError):
    pass


class StorageGone(StoreError):
    pass


def restore_advice(data_dir: Path) -> str:
    return (f"Stop the appliance (sudo systemctl stop leukoscope), move {data_dir} aside (do not delete it), then "
            f"restore the last backup: leukoscope restore BACKUP_FOLDER --data-dir {data_dir} --force")


class DataDirLock:
    """An exclusive flock on ``data_dir/leukoscope.lock`` holding the owner's pid; released on close
    (or by the kernel when the process dies, so a power cut never leaves a stale lock)."""

    def __init__(self, data_dir: Path, purpose: str = "the appliance"):
        self.path = Path(data_dir) / LOCK_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(f"{data_dir} is in use by another Leukoscope process ({holder}); only one may use "
                              f"a data folder at a time. Stop it first (sudo systemctl stop leukoscope) or choose "
                              f"another --data-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)
        self.fd = fd
        self.inode = os.fstat(fd).st_ino

    @staticmethod
    def holder(data_dir: Path) -> str | None:
        """Who holds the folder's lock now ("pid N: ..."), or None; takes nothing."""
        try:
            fd = os.open(Path(data_dir) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        finally:
            os.close(fd)

    def intact(self) -> bool:
        try:
            return os.stat(self.path).st_ino == self.inode
        except OSError:
            return False

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None


@dataclass
class RepairReport:
    orphans_quarantined: list[str]
    rows_without_files: list[str]  # reported, never deleted: the row's counts and reviews still matter
    temp_files_removed: list[str]
    integrity: str
    orphans_left: list[str] = field(default_factory=list)  # quarantine full: left where they were

    @property
    def repaired(self) -> int:
        return len(self.orphans_quarantined) + len(self.temp_files_removed)

    def to_dict(self) -> dict:
        return {"integrity": self.integrity, "orphans_quarantined": self.orphans_quarantined,
                "rows_without_files": self.rows_without_files, "temp_files_removed": self.temp_files_removed,
                "orphans_left": self.orphans_left}


class Store:
    """One SQLite database and an images folder under ``data_dir``."""

    def __init__(self, data_dir: str | Path, min_free_mb: int = 50, exclusive: bool = False, reserve_mb: int = 0):
        """``exclusive``: the appliance itself: lock the folder and refuse to open records that are
        missing beside existing images or damaged. ``reserve_mb``: keep a file of that size to release
        when the disk fills, so sign-in and deleting old samples still work."""
        self.data_dir = Path(data_dir)
        self.images = self.data_dir / "images"
        self.db_path = self.data_dir / "leukoscope.db"
        self.min_free_mb = min_free_mb
        self.reserve_bytes = reserve_mb * 1024 * 1024
        self.reserve_problem: str | None = None  # set while the reserve is missing or short
        self._reserve_lock = threading.Lock()
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self.lock = DataDirLock(self.data_dir) if exclusive else None
        try:
            if exclusive:
                self._refuse_missing_database()
            self.images.mkdir(parents=True, exist_ok=True)
            try:
                self.migrate()
            except sqlite3.DatabaseError as exc:
                raise StoreDamaged(f"the records database {self.db_path} cannot be read ({exc}). "
                                   + restore_advice(self.data_dir)) from exc
            self._db_inode = os.stat(self.db_path).st_ino
        except BaseException:
            self.release_lock()
            raise

    def _refuse_missing_database(self) -> None:
        try:
            empty = self.db_path.stat().st_size == 0
        except FileNotFoundError:
            empty = True
        if not empty or not self.images.is_dir():
            return
        n = sum(1 for p in self.images.rglob("*") if p.is_file())
        if n:
            what = "empty" if self.db_path.exists() else "missing"
            raise StoreDamaged(f"the records database {self.db_path} is {what} but {n} stored images exist: "
                               "starting would lose the link between them and their samples. "
                               + restore_advice(self.data_dir))

    # -- connections -------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            inode = getattr(self, "_db_inode", None)
            if inode is not None:
                self.verify()  # a new thread must never create a fresh, empty database
            # once created, open read-write only: a vanished file is an error, not a new database
            uri = f"file:{self.db_path}?mode={'rw' if inode is not None else 'rwc'}"
            conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed capture survives a power cut (SD cards lose data with less).
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def verify(self) -> None:
        """Raise StorageGone when the data folder was deleted or replaced under this process."""
        inode = getattr(self, "_db_inode", None)
        try:
            same_db = inode is None or os.stat(self.db_path).st_ino == inode
        except OSError:
            same_db = False
        if not same_db or (self.lock is not None and not self.lock.intact()):
            raise StorageGone(f"the data folder {self.data_dir} was removed or replaced while the appliance was "
                              "running: nothing more can be saved. Restart the appliance "
                              "(sudo systemctl restart leukoscope); restore a backup if records are missing")

    @contextmanager
    def transaction(self):
        conn = self.connect()
        self.keep_reserve()  # one statvfs: a disk filled by another writer releases the reserve before we write
        with self._write_lock:
            self.verify()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # also after a failed COMMIT (disk full, deferred constraint): a connection left
                # inside a transaction would make every later write on this thread fail
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.exception("rollback failed; reopening this thread's connection")
                        self.close()
                exc = sys.exc_info()[1]
                if isinstance(exc, sqlite3.OperationalError) and getattr(exc, "sqlite_errorcode", None) == 13:
                    # SQLITE_FULL: the disk filled while the rows were written; the same words as a full
                    # disk while the images were written, for the operator.
                    raise StorageFull(errno.ENOSPC, "storage full: the capture was not saved; "
                                                    "export and delete old samples") from exc
                raise

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def release_lock(self) -> None:
        self.close()
        if self.lock is not None:
            self.lock.close()

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
        self.verify()  # before any file is written: never recreate a deleted data folder
        free = self.keep_reserve()
        if free - needed_bytes < self.min_free_mb * 1024 * 1024:
            raise StorageFull(errno.ENOSPC, f"storage almost full ({free // (1024 * 1024)} MB free): "
                                            "export and delete old samples before capturing more")

    def keep_reserve(self) -> int:
        """Release the reserve file when the disk is nearly full (so sign-in, which writes, and
        deleting samples still work), put it back once there is room again -- as much of it as fits
        when there is little room (a box restarted on a nearly full disk still gets some). Returns
        free bytes. A missing or short reserve is reported (``reserve_problem``, /health, the log)."""
        free = shutil.disk_usage(self.data_dir).free
        if not self.reserve_bytes:
            return free
        path = self.data_dir / RESERVE_NAME
        with self._reserve_lock:
            try:
                try:
                    have = path.stat().st_size
                except FileNotFoundError:
                    have = -1
                if have >= 0 and free < RESERVE_ROOM:
                    path.unlink()
                    have = -1
                    log.warning("disk nearly full (%d bytes free): reserve released for sign-in and deletion", free)
                    free = shutil.disk_usage(self.data_dir).free
                elif have < self.reserve_bytes and free >= 2 * RESERVE_ROOM:
                    want = min(self.reserve_bytes, (free + max(have, 0)) // 2)
                    if want > max(have, 0) and free - (want - max(have, 0)) >= RESERVE_ROOM:
                        with open(path, "ab") as fh:
                            os.posix_fallocate(fh.fileno(), 0, want)  # real blocks, not a sparse file
                        have = want
                        free = shutil.disk_usage(self.data_dir).free
            except OSError as exc:
                log.warning("reserve file %s: %s", path, exc)
                try:
                    have = path.stat().st_size
                except OSError:
                    have = -1
            self._note_reserve(have, free)
        return free

    def _note_reserve(self, have: int, free: int) -> None:
        mb = self.reserve_bytes / (1024 * 1024)
        if have >= self.reserve_bytes:
            problem = None
        elif have <= 0:
            problem = (f"storage reserve missing: the {mb:.0f} MB kept free for sign-in and deleting samples on a "
                       f"full disk could not be set aside ({free / (1024 * 1024):.1f} MB free in {self.data_dir}); "
                       "export and delete old samples")
        else:
            problem = (f"storage reserve short: {have / (1024 * 1024):.1f} of {mb:.0f} MB kept free for sign-in and "
                       f"deleting samples ({free / (1024 * 1024):.1f} MB free in {self.data_dir}); "
                       "export and delete old samples")
        if (problem is None) != (self.reserve_problem is None):  # log each change of state once
            if problem:
                log.warning("%s", problem)
            else:
                log.info("storage reserve of %.0f MB in place again", mb)
        self.reserve_problem = problem

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
        """Find files without rows and rows without files. With ``repair``: refuse damaged records,
        remove half-written temporary files, and move orphan images to the quarantine folder (never
        deleted: a backup restored later may claim them). Rows are never deleted."""
        conn = self.connect()
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            integrity = str(exc)
        if repair and integrity != "ok":
            raise StoreDamaged(f"the records database {self.db_path} failed its integrity check ({integrity}). "
                               + restore_advice(self.data_dir))
        referenced = {r[0] for r in conn.execute("SELECT image_path FROM fields UNION SELECT crop_path FROM cells")}
        temp_removed, orphans = [], []
        for p in self.images.rglob("*"):
            if not p.is_file():
                continue
            rel = p.relative_to(self.data_dir).as_posix()
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                temp_removed.append(rel)  # never renamed into place: no row can name it
            elif rel not in referenced:
                orphans.append(rel)
        missing_rows = []
        for table, col in (("cells", "crop_path"), ("fields", "image_path")):
            for row in conn.execute(f"SELECT id, {col} FROM {table}"):
                if not (self.data_dir / row[1]).is_file():
                    missing_rows.append(f"{table}:{row[0]}:{row[1]}")
        if not repair:
            return RepairReport(orphans, missing_rows, temp_removed, integrity)
        self.remove_files(temp_removed)
        moved, left = self._quarantine(orphans)
        report = RepairReport(moved, missing_rows, temp_removed, integrity, left)
        if missing_rows:
            log.error("%d record(s) point to missing images (kept; their counts stay valid): %s",
                      len(missing_rows), missing_rows[:5])
        if report.repaired or missing_rows or left:
            self.audit("system", "startup-repair", "", report.to_dict())
        return report

    def quarantine_bytes(self) -> int:
        q = self.data_dir / QUARANTINE
        return sum(p.stat().st_size for p in q.rglob("*") if p.is_file()) if q.is_dir() else 0

    def _quarantine(self, rels: list[str]) -> tuple[list[str], list[str]]:
        """Move orphan images under quarantine/<time>/, up to QUARANTINE_MAX_BYTES in all; the rest stay."""
        if not rels:
            return [], []
        used = self.quarantine_bytes()
        batch = self.data_dir / QUARANTINE / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")
        moved, left = [], []
        for rel in rels:
            src = self.data_dir / rel
            size = src.stat().st_size
            if used + size > QUARANTINE_MAX_BYTES:
                left.append(rel)
                continue
            dst = batch / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)  # same file system: a rename, nothing copied
            used += size
            moved.append(rel)
        if left:
            log.warning("quarantine full (%d MB): %d orphan image(s) left in place", used >> 20, len(left))
        return moved, left
