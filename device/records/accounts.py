"""Accounts, server-side sessions and sign-in counters: the SQL behind the web layer's sign-in (device/web/auth.py).

Failed sign-ins are counted per user name and per client *before* the password is checked, inside one write
transaction, so parallel guesses cannot overtake the limit. Passwords arrive here already hashed.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from device.records.store import Store, now

# Repeated failures for one key are aggregated into one audit row per interval (no row per guess).
AUDIT_INTERVAL = timedelta(minutes=10)
# Sessions one user may hold at once (a kiosk, a few phones and laptops); a new sign-in beyond it ends the oldest.
MAX_SESSIONS = 20


def _t(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def has_users(store: Store) -> bool:
    return store.connect().execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


# -- sessions ---------------------------------------------------------------
def add_session(store: Store, token_id: str, user_id: int, hours: int, client: str = "") -> None:
    t = utcnow()
    with store.transaction() as tx:
        tx.execute("DELETE FROM sessions WHERE expires_at < ?", (_t(t),))  # housekeeping, bounded by sign-ins
        tx.execute("INSERT INTO sessions (id, user_id, created_at, expires_at, client) VALUES (?, ?, ?, ?, ?)",
                   (token_id, user_id, _t(t), _t(t + timedelta(hours=hours)), client[:64]))
        # at most MAX_SESSIONS per user: the oldest sign-ins are signed out
        tx.execute("DELETE FROM sessions WHERE user_id = ? AND rowid NOT IN (SELECT rowid FROM sessions "
                   "WHERE user_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?)", (user_id, user_id, MAX_SESSIONS))


def end_session(store: Store, token_id: str) -> None:
    with store.transaction() as tx:
        tx.execute("DELETE FROM sessions WHERE id = ?", (token_id,))


def end_sessions(store: Store, user_id: int, conn=None) -> int:
    """Revoke every session of a user (password changed or reset, account deactivated)."""
    if conn is not None:
        return conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,)).rowcount
    with store.transaction() as tx:
        return tx.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,)).rowcount


def session_user(store: Store, token_id: str):
    """The active user of an unexpired session, or None."""
    return store.connect().execute(
        "SELECT u.id, u.username, u.role, u.active, u.language FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.id = ? AND s.expires_at > ? AND u.active = 1", (token_id, _t(utcnow()))).fetchone()


# -- accounts ---------------------------------------------------------------
def user_by_id(store: Store, user_id: int):
    return store.connect().execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()


def user_by_name(store: Store, username: str):
    return store.connect().execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()


def list_users(store: Store) -> list:
    return store.connect().execute("SELECT id, username, role, active, created_at, qualified FROM users ORDER BY id").fetchall()


def create_user(store: Store, username: str, pw_hash: str, role: str, by: str) -> int:
    with store.transaction() as tx:
        cur = tx.execute("INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                         (username, pw_hash, role, now()))
        store.audit(by, "create-user", f"user:{cur.lastrowid}", {"username": username, "role": role}, conn=tx)
        return cur.lastrowid


def create_first_admin(store: Store, username: str, pw_hash: str) -> int | None:
    """The administrator, only while no account exists: one statement, so two forms cannot both win."""
    with store.transaction() as tx:
        cur = tx.execute("INSERT INTO users (username, password_hash, role, created_at) SELECT ?, ?, 'admin', ? "
                         "WHERE NOT EXISTS (SELECT 1 FROM users)", (username, pw_hash, now()))
        if cur.rowcount != 1:
            return None
        store.audit(username, "create-user", f"user:{cur.lastrowid}", {"username": username, "role": "admin"}, conn=tx)
        return cur.lastrowid


def set_password(store: Store, user_id: int, pw_hash: str, by: str, action: str) -> None:
    """A new password ends every session of that user."""
    with store.transaction() as tx:
        row = tx.execute("SELECT username FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            raise LookupError(user_id)
        tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", (pw_hash, user_id))
        ended = end_sessions(store, user_id, conn=tx)
        tx.execute("DELETE FROM login_failures WHERE key = ?", (user_key(row["username"]),))
        store.audit(by, action, f"user:{user_id}", {"username": row["username"], "sessions_ended": ended}, conn=tx)


def set_language(store: Store, user_id: int, username: str, lang: str) -> None:
    with store.transaction() as tx:
        tx.execute("UPDATE users SET language = ? WHERE id = ?", (lang, user_id))
        store.audit(username, "set-language", f"user:{user_id}", {"language": lang}, conn=tx)


def unlock_user(store: Store, user_id: int, username: str, by: str) -> None:
    with store.transaction() as tx:
        tx.execute("DELETE FROM login_failures WHERE key = ?", (user_key(username),))
        store.audit(by, "unlock-user", f"user:{user_id}", {"username": username}, conn=tx)


def set_active(store: Store, user_id: int, username: str, active: bool, by: str) -> int:
    """Deactivating ends every session of the user; returns how many."""
    with store.transaction() as tx:
        tx.execute("UPDATE users SET active = ? WHERE id = ?", (1 if active else 0, user_id))
        ended = end_sessions(store, user_id, conn=tx) if not active else 0
        store.audit(by, f"{'reactivate' if active else 'deactivate'}-user", f"user:{user_id}",
                    {"username": username, "sessions_ended": ended}, conn=tx)
    return ended


def sign_out_everywhere(store: Store, user_id: int, username: str, by: str) -> int:
    with store.transaction() as tx:
        ended = end_sessions(store, user_id, conn=tx)
        store.audit(by, "end-sessions", f"user:{user_id}", {"username": username, "sessions_ended": ended}, conn=tx)
    return ended


# -- sign-in throttling -----------------------------------------------------
def user_key(username: str) -> str:
    return "user:" + username.strip().lower()


def client_key(client: str) -> str:
    return "client:" + (client or "-")


def _charge(tx, key: str, limit: int, window: timedelta, lock_for: timedelta, t: datetime) -> bool:
    """Count one attempt against ``key`` before the password is checked; False when the key is locked."""
    row = tx.execute("SELECT count, window_start, locked_until FROM login_failures WHERE key = ?", (key,)).fetchone()
    if row is not None and row["locked_until"] and datetime.fromisoformat(row["locked_until"]) > t:
        return False
    if row is None or row["locked_until"] or datetime.fromisoformat(row["window_start"]) + window < t:
        tx.execute("INSERT INTO login_failures (key, count, window_start) VALUES (?, 1, ?) ON CONFLICT(key) DO "
                   "UPDATE SET count = 1, window_start = excluded.window_start, locked_until = NULL", (key, _t(t)))
        return True
    count = row["count"] + 1
    if count > limit:
        tx.execute("UPDATE login_failures SET locked_until = ? WHERE key = ?", (_t(t + lock_for), key))
        return False
    tx.execute("UPDATE login_failures SET count = ? WHERE key = ?", (count, key))
    return True


def _audit_failure(store: Store, tx, key: str, who: str, reason: str, t: datetime) -> None:
    """One audit row per key and interval, updated as failures repeat: a flood of guesses cannot grow the log."""
    row = tx.execute("SELECT audit_id FROM login_failures WHERE key = ?", (key,)).fetchone()
    audit_id = row["audit_id"] if row else None
    prev = tx.execute("SELECT at, detail FROM audit WHERE id = ?", (audit_id,)).fetchone() if audit_id else None
    if prev is not None and datetime.fromisoformat(prev["at"]) + AUDIT_INTERVAL > t:
        detail = json.loads(prev["detail"] or "{}")
        detail["attempts"] = detail.get("attempts", 1) + 1
        detail["last"] = _t(t)
        detail["reasons"] = sorted(set(detail.get("reasons", [])) | {reason})
        tx.execute("UPDATE audit SET detail = ? WHERE id = ?", (json.dumps(detail, sort_keys=True), audit_id))
        return
    store.audit(who, "login-failed", key, {"attempts": 1, "first": _t(t), "last": _t(t), "reasons": [reason]}, conn=tx)
    new_id = tx.execute("SELECT last_insert_rowid()").fetchone()[0]
    tx.execute("INSERT INTO login_failures (key, count, window_start, audit_id) VALUES (?, 0, ?, ?) "
               "ON CONFLICT(key) DO UPDATE SET audit_id = excluded.audit_id", (key, _t(t), new_id))


def charge_attempt(store: Store, username: str, client: str, client_limit: int, client_window: timedelta,
                   max_failures: int, lockout_minutes: int, t: datetime) -> str | None:
    """Charge one sign-in attempt to the client and the user name, before any password check:
    None when it may proceed, else "client-limit" or "locked" (audited)."""
    ukey, ckey = user_key(username), client_key(client)
    with store.transaction() as tx:
        # counters nobody has touched for a day are forgotten: the table stays small whatever is guessed
        tx.execute("DELETE FROM login_failures WHERE window_start < ? AND (locked_until IS NULL OR locked_until < ?)",
                   (_t(t - timedelta(days=1)), _t(t)))
        if not _charge(tx, ckey, client_limit, client_window, client_window, t):
            _audit_failure(store, tx, ckey, "-", "client-limit", t)
            return "client-limit"
        if not _charge(tx, ukey, max_failures, timedelta(minutes=lockout_minutes),
                       timedelta(minutes=lockout_minutes), t):
            _audit_failure(store, tx, ukey, username or "-", "locked", t)
            return "locked"
    return None


def login_succeeded(store: Store, username: str, client: str) -> None:
    with store.transaction() as tx:
        # the attempt was charged before the check: give it back to the client and clear the user's count
        tx.execute("DELETE FROM login_failures WHERE key = ?", (user_key(username),))
        tx.execute("UPDATE login_failures SET count = MAX(count - 1, 0) WHERE key = ?", (client_key(client),))
        store.audit(username, "login", conn=tx)


def login_failed(store: Store, username: str, t: datetime) -> None:
    with store.transaction() as tx:
        _audit_failure(store, tx, user_key(username), username or "-", "wrong", t)


def lock_status(store: Store, username: str) -> str | None:
    """When the user name's lock ends (ISO UTC), or None."""
    row = store.connect().execute("SELECT locked_until FROM login_failures WHERE key = ?",
                                  (user_key(username),)).fetchone()
    if row and row["locked_until"] and datetime.fromisoformat(row["locked_until"]) > utcnow():
        return row["locked_until"]
    return None
