"""The district's accounts: administrators (who add accounts) and experts (who sign verdicts), in a small SQLite
file of the district's own data folder. Passwords are hashed (werkzeug's scrypt)."""
from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

ROLES = ("admin", "expert")
MIN_PASSWORD = 10


class AccountError(ValueError):
    pass


class Accounts:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._db() as db:
            db.execute("CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE "
                       "COLLATE NOCASE, full_name TEXT NOT NULL DEFAULT '', password_hash TEXT NOT NULL, role TEXT NOT "
                       "NULL, active INTEGER NOT NULL DEFAULT 1, created_at TEXT NOT NULL)")

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        return db

    def count(self) -> int:
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM users").fetchone()[0]

    def create(self, username: str, password: str, role: str, full_name: str = "") -> int:
        username = username.strip()
        if role not in ROLES:
            raise AccountError(f"role must be one of {', '.join(ROLES)}")
        if not username or len(username) > 64:
            raise AccountError("a user name of 1 to 64 characters is required")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"the password must have at least {MIN_PASSWORD} characters")
        try:
            with self._db() as db:
                return db.execute("INSERT INTO users (username, full_name, password_hash, role, created_at) "
                                  "VALUES (?, ?, ?, ?, ?)", (username, full_name.strip()[:120] or username,
                                                             generate_password_hash(password), role,
                                                             datetime.now(timezone.utc).isoformat())).lastrowid
        except sqlite3.IntegrityError:
            raise AccountError(f"the user name {username!r} is taken") from None

    def check(self, username: str, password: str) -> sqlite3.Row | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM users WHERE username = ? AND active = 1", (username.strip(),)).fetchone()
        if row is None:
            check_password_hash(generate_password_hash("x"), password)  # same time for unknown names
            return None
        return row if check_password_hash(row["password_hash"], password) else None

    def get(self, user_id: int) -> sqlite3.Row | None:
        with self._db() as db:
            return db.execute("SELECT * FROM users WHERE id = ? AND active = 1", (user_id,)).fetchone()

    def all(self) -> list[sqlite3.Row]:
        with self._db() as db:
            return db.execute("SELECT id, username, full_name, role, active, created_at FROM users ORDER BY id"
                              ).fetchall()
