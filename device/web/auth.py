"""Accounts: first-start administrator, sign-in, server-side sessions, passwords, the administrator's Users page.

Sessions live in the database (the cookie carries a random token; the table keeps only its hash), so logout,
a password change, a reset, or deactivation ends them at once. Failed sign-ins are counted per user name and per
client in the database *before* the password is checked, inside one write transaction, so parallel guesses cannot
overtake the limit; unknown and real user names take the same time and get the same answers.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from datetime import datetime, timedelta, timezone
from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from werkzeug.security import check_password_hash, generate_password_hash

from device.records.store import Store, now

bp = Blueprint("auth", __name__)
USERNAME = re.compile(r"^[A-Za-z0-9._-]{2,40}$")
MIN_PASSWORD = 8
# Per client (IP address): failed sign-ins allowed per window before every attempt from it is refused for a while.
CLIENT_MAX_FAILURES = 30
CLIENT_WINDOW = timedelta(minutes=10)
# Repeated failures for one key are aggregated into one audit row per interval (no row per guess).
AUDIT_INTERVAL = timedelta(minutes=10)
# Checked for unknown user names, so they cost the same time as real ones.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))
LANGUAGES = {"en": "English", "fr": "Français", "ar": "العربية"}


def runtime():
    return current_app.extensions["leukoscope"]


def has_users(store: Store) -> bool:
    return store.connect().execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def _t(dt: datetime) -> str:
    return dt.isoformat(timespec="seconds")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- sessions ---------------------------------------------------------------
def start_session(store: Store, user_id: int, hours: int, client: str = "") -> str:
    token = secrets.token_urlsafe(32)
    t = _utcnow()
    with store.transaction() as tx:
        tx.execute("DELETE FROM sessions WHERE expires_at < ?", (_t(t),))  # housekeeping, bounded by sign-ins
        tx.execute("INSERT INTO sessions (id, user_id, created_at, expires_at, client) VALUES (?, ?, ?, ?, ?)",
                   (_token_id(token), user_id, _t(t), _t(t + timedelta(hours=hours)), client[:64]))
    session.clear()
    session["sid"] = token
    session.permanent = True
    return token


def end_sessions(store: Store, user_id: int, conn=None) -> int:
    """Revoke every session of a user (password changed or reset, account deactivated)."""
    if conn is not None:
        return conn.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,)).rowcount
    with store.transaction() as tx:
        return tx.execute("DELETE FROM sessions WHERE user_id = ?", (user_id,)).rowcount


def current_user(store: Store):
    token = session.get("sid")
    if not token or not isinstance(token, str):
        return None
    row = store.connect().execute(
        "SELECT u.id, u.username, u.role, u.active, u.language FROM sessions s JOIN users u ON u.id = s.user_id "
        "WHERE s.id = ? AND s.expires_at > ? AND u.active = 1", (_token_id(token), _t(_utcnow()))).fetchone()
    if row is None:
        session.clear()
    return row


def admin_required(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        if g.user is None or g.user["role"] != "admin":
            abort(403)
        return view(*args, **kwargs)

    return wrapped


# -- accounts ---------------------------------------------------------------
def validate_password(password: str, confirm: str) -> str | None:
    if len(password) < MIN_PASSWORD:
        return _("Passwords need at least %(n)d characters.", n=MIN_PASSWORD)
    if len(password) > 200:
        return _("That password is too long.")
    if password != confirm:
        return _("The two passwords differ.")
    return None


def validate_new_account(username: str, password: str, confirm: str) -> str | None:
    if not USERNAME.match(username):
        return _("User names are 2 to 40 letters, digits, dots, dashes or underscores.")
    return validate_password(password, confirm)


def create_user(store: Store, username: str, password: str, role: str, by: str) -> int:
    with store.transaction() as tx:
        cur = tx.execute("INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                         (username, generate_password_hash(password), role, now()))
        store.audit(by, "create-user", f"user:{cur.lastrowid}", {"username": username, "role": role}, conn=tx)
        return cur.lastrowid


def create_first_admin(store: Store, username: str, password: str) -> int | None:
    """The administrator, only while no account exists: one statement, so two forms cannot both win."""
    pw_hash = generate_password_hash(password)
    with store.transaction() as tx:
        cur = tx.execute("INSERT INTO users (username, password_hash, role, created_at) SELECT ?, ?, 'admin', ? "
                         "WHERE NOT EXISTS (SELECT 1 FROM users)", (username, pw_hash, now()))
        if cur.rowcount != 1:
            return None
        store.audit(username, "create-user", f"user:{cur.lastrowid}", {"username": username, "role": "admin"}, conn=tx)
        return cur.lastrowid


def set_password(store: Store, user_id: int, password: str, by: str, action: str) -> None:
    """A new password ends every session of that user."""
    pw_hash = generate_password_hash(password)
    with store.transaction() as tx:
        row = tx.execute("SELECT username FROM users WHERE id = ?", (user_id,)).fetchone()
        if row is None:
            raise LookupError(user_id)
        tx.execute("UPDATE users SET password_hash = ? WHERE id = ?", (pw_hash, user_id))
        ended = end_sessions(store, user_id, conn=tx)
        tx.execute("DELETE FROM login_failures WHERE key = ?", (_user_key(row["username"]),))
        store.audit(by, action, f"user:{user_id}", {"username": row["username"], "sessions_ended": ended}, conn=tx)


# -- sign-in throttling -----------------------------------------------------
def _user_key(username: str) -> str:
    return "user:" + username.strip().lower()


def _client_key(client: str) -> str:
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


def authenticate(store: Store, username: str, password: str, client: str, max_failures: int,
                 lockout_minutes: int):
    """(user row, None) on success, else (None, reason) with reason "wrong", "locked" or "client-limit".
    The answer and its time never depend on whether the user name exists."""
    t = _utcnow()
    ukey, ckey = _user_key(username), _client_key(client)
    with store.transaction() as tx:
        # counters nobody has touched for a day are forgotten: the table stays small whatever is guessed
        tx.execute("DELETE FROM login_failures WHERE window_start < ? AND (locked_until IS NULL OR locked_until < ?)",
                   (_t(t - timedelta(days=1)), _t(t)))
        if not _charge(tx, ckey, CLIENT_MAX_FAILURES, CLIENT_WINDOW, CLIENT_WINDOW, t):
            _audit_failure(store, tx, ckey, "-", "client-limit", t)
            return None, "client-limit"
        if not _charge(tx, ukey, max_failures, timedelta(minutes=lockout_minutes),
                       timedelta(minutes=lockout_minutes), t):
            _audit_failure(store, tx, ukey, username or "-", "locked", t)
            return None, "locked"
    row = store.connect().execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
    ok = check_password_hash(row["password_hash"] if row is not None else _DUMMY_HASH, password)
    if ok and row is not None and row["active"]:
        with store.transaction() as tx:
            # the attempt was charged before the check: give it back to the client and clear the user's count
            tx.execute("DELETE FROM login_failures WHERE key = ?", (ukey,))
            tx.execute("UPDATE login_failures SET count = MAX(count - 1, 0) WHERE key = ?", (ckey,))
            store.audit(row["username"], "login", conn=tx)
        return row, None
    with store.transaction() as tx:
        _audit_failure(store, tx, ukey, username or "-", "wrong", t)
    return None, "wrong"


def lock_status(store: Store, username: str) -> str | None:
    """When the user name's lock ends (ISO UTC), or None."""
    row = store.connect().execute("SELECT locked_until FROM login_failures WHERE key = ?",
                                  (_user_key(username),)).fetchone()
    if row and row["locked_until"] and datetime.fromisoformat(row["locked_until"]) > _utcnow():
        return row["locked_until"]
    return None


# -- redirects --------------------------------------------------------------
_UNSAFE = set(string.whitespace) | {chr(c) for c in range(32)} | {"\x7f", "\\"}


def safe_next(target: str | None) -> str | None:
    """Only a path on this appliance. Parsed as a URL (scheme and host must be empty) after refusing control
    characters and whitespace, which browsers strip: "/\\t/evil.example" would otherwise become "//evil.example"."""
    if not target or any(ch in _UNSAFE for ch in target):
        return None
    try:
        parts = urlsplit(target)
    except ValueError:
        return None
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return None
    return target


# -- pages ------------------------------------------------------------------
@bp.route("/setup", methods=["GET", "POST"])
def setup():
    store = runtime().store
    if has_users(store):
        return redirect(url_for("auth.login"))
    error = None
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        error = validate_new_account(username, password, request.form.get("confirm", ""))
        if error is None:
            uid = create_first_admin(store, username, password)
            if uid is None:  # another first-start form won the race
                return redirect(url_for("auth.login"))
            start_session(store, uid, runtime().config.web.session_hours, request.remote_addr or "")
            flash(_("Administrator created. Add operators under Users."))
            return redirect(url_for("views.index"))
    return render_template("setup.html", error=error), 400 if error else 200


@bp.route("/login", methods=["GET", "POST"])
def login():
    rt = runtime()
    store, web = rt.store, rt.config.web
    if not has_users(store):
        return redirect(url_for("auth.setup"))
    error, code = None, 200
    if request.method == "POST":
        username = request.form.get("username", "").strip()[:100]
        password = request.form.get("password", "")[:500]
        row, reason = authenticate(store, username, password, request.remote_addr or "", web.max_failed_logins,
                                   web.lockout_minutes)
        if row is not None:
            start_session(store, row["id"], web.session_hours, request.remote_addr or "")
            return redirect(safe_next(request.args.get("next")) or url_for("views.index"))
        if reason == "client-limit":
            error, code = _("Too many failed sign-ins from this device. Wait %(m)d minutes, then try again.",
                            m=int(CLIENT_WINDOW.total_seconds() // 60)), 429
        elif reason == "locked":
            error, code = _("Too many failed sign-ins for this user name: it is locked for %(m)d minutes. "
                            "The administrator can unlock it on the Users page.", m=web.lockout_minutes), 401
        else:
            error, code = _("Wrong user name or password."), 401
    return render_template("login.html", error=error), code


@bp.route("/logout", methods=["POST"])
def logout():
    store = runtime().store
    token = session.get("sid")
    if token and isinstance(token, str):
        with store.transaction() as tx:
            tx.execute("DELETE FROM sessions WHERE id = ?", (_token_id(token),))
    if g.user is not None:
        store.audit(g.user["username"], "logout")
    session.clear()
    return redirect(url_for("auth.login"))


@bp.route("/account", methods=["GET", "POST"])
def account():
    """The signed-in user's own page: language and password."""
    store = runtime().store
    error = None
    if request.method == "POST":
        if request.form.get("action") == "language":
            lang = request.form.get("language", "")
            if lang not in LANGUAGES and lang != "":
                error = _("Unknown language.")
            else:
                with store.transaction() as tx:
                    tx.execute("UPDATE users SET language = ? WHERE id = ?", (lang, g.user["id"]))
                    store.audit(g.user["username"], "set-language", f"user:{g.user['id']}", {"language": lang}, conn=tx)
                return redirect(url_for("auth.account"))
        else:
            row = store.connect().execute("SELECT password_hash FROM users WHERE id = ?", (g.user["id"],)).fetchone()
            new, confirm = request.form.get("password", ""), request.form.get("confirm", "")
            if not check_password_hash(row["password_hash"], request.form.get("current", "")[:500]):
                error = _("The current password is wrong.")
            else:
                error = validate_password(new, confirm)
            if error is None:
                set_password(store, g.user["id"], new, g.user["username"], "change-password")
                start_session(store, g.user["id"], runtime().config.web.session_hours, request.remote_addr or "")
                flash(_("Password changed. Every other session of yours has been signed out."))
                return redirect(url_for("auth.account"))
    return render_template("account.html", error=error, languages=LANGUAGES), 400 if error else 200


def _user_or_404(store: Store, user_id: int):
    row = store.connect().execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        abort(404)
    return row


@bp.route("/users", methods=["GET", "POST"])
@admin_required
def users():
    store = runtime().store
    error = None
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        role = request.form.get("role", "operator")
        error = validate_new_account(username, password, request.form.get("confirm", ""))
        if role not in ("admin", "operator"):
            error = _("Unknown role.")
        if error is None:
            if store.connect().execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                error = _("That user name is taken.")
            else:
                create_user(store, username, password, role, g.user["username"])
                flash(_("User %(name)s created.", name=username))
                return redirect(url_for("auth.users"))
    rows = store.connect().execute("SELECT id, username, role, active, created_at FROM users ORDER BY id").fetchall()
    locks = {r["id"]: lock_status(store, r["username"]) for r in rows}
    return render_template("users.html", users=rows, locks=locks, error=error), 400 if error else 200


@bp.route("/users/<int:user_id>/<action>", methods=["POST"])
@admin_required
def user_action(user_id: int, action: str):
    store = runtime().store
    row = _user_or_404(store, user_id)
    me = g.user["username"]
    if action == "unlock":
        with store.transaction() as tx:
            tx.execute("DELETE FROM login_failures WHERE key = ?", (_user_key(row["username"]),))
            store.audit(me, "unlock-user", f"user:{user_id}", {"username": row["username"]}, conn=tx)
        flash(_("%(name)s is unlocked.", name=row["username"]))
    elif action in ("deactivate", "reactivate"):
        if user_id == g.user["id"]:
            flash(_("You cannot deactivate your own account."), "error")
            return redirect(url_for("auth.users"))
        active = 1 if action == "reactivate" else 0
        with store.transaction() as tx:
            tx.execute("UPDATE users SET active = ? WHERE id = ?", (active, user_id))
            ended = end_sessions(store, user_id, conn=tx) if not active else 0
            store.audit(me, f"{action}-user", f"user:{user_id}", {"username": row["username"], "sessions_ended": ended},
                        conn=tx)
        flash(_("%(name)s is deactivated: signed out everywhere and cannot sign in.", name=row["username"])
              if not active else _("%(name)s can sign in again.", name=row["username"]))
    elif action == "reset-password":
        password = request.form.get("password", "")
        error = validate_password(password, request.form.get("confirm", ""))
        if error:
            flash(error, "error")
            return redirect(url_for("auth.users"))
        set_password(store, user_id, password, me, "reset-password")
        flash(_("New password set for %(name)s; their sessions were ended.", name=row["username"]))
    elif action == "sign-out":
        with store.transaction() as tx:
            ended = end_sessions(store, user_id, conn=tx)
            store.audit(me, "end-sessions", f"user:{user_id}", {"username": row["username"], "sessions_ended": ended},
                        conn=tx)
        flash(_("%(name)s is signed out everywhere.", name=row["username"]))
    else:
        abort(404)
    return redirect(url_for("auth.users"))
