"""Accounts: first-start administrator, sign-in, server-side sessions, passwords, the administrator's Users page.

Sessions live in the database (the cookie carries a random token; the table keeps only its hash), so logout,
a password change, a reset, or deactivation ends them at once. Failed sign-ins are counted per user name and per
client in the database *before* the password is checked, inside one write transaction, so parallel guesses cannot
overtake the limit; unknown and real user names take the same time and get the same answers. The SQL lives in
device/records/accounts.py; this module hashes passwords, keeps the cookie and serves the pages.
"""
from __future__ import annotations

import hashlib
import logging
import re
import secrets
import string
import threading
from datetime import datetime, timedelta
from functools import wraps
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from flask_babel import gettext as _
from werkzeug.security import check_password_hash, generate_password_hash

from device.config import LANGUAGES
from device.records import accounts
from device.records.store import StorageFull, Store

log = logging.getLogger("leukoscope.auth")

bp = Blueprint("auth", __name__)
USERNAME = re.compile(r"^[A-Za-z0-9._-]{2,40}$")
MIN_PASSWORD = 8
# Per client (IP address): failed sign-ins allowed per window before every attempt from it is refused for a while.
CLIENT_MAX_FAILURES = 30
CLIENT_WINDOW = timedelta(minutes=10)
# Checked for unknown user names, so they cost the same time as real ones.
_DUMMY_HASH = generate_password_hash(secrets.token_hex(16))


def runtime():
    return current_app.extensions["leukoscope"]


def has_users(store: Store) -> bool:
    return accounts.has_users(store)


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- a full disk ------------------------------------------------------------
class _FullDisk:
    """Sign-in state held in memory while the database cannot be written (the disk is full and the
    reserve is spent): attempts are still counted before the password check, sessions still end at
    logout, password change, reset and deactivation. Forgotten at restart, like the full disk's gap."""

    def __init__(self):
        self.lock = threading.Lock()
        self.attempts: dict[str, tuple[int, datetime, datetime | None]] = {}
        self.sessions: dict[str, tuple[int, datetime, str]] = {}  # token id -> user, expiry, password hash
        self.revoked: set[str] = set()  # sessions ended while their database row could not be deleted

    def charge(self, key: str, limit: int, window: timedelta, t: datetime) -> bool:
        with self.lock:
            count, start, locked = self.attempts.get(key, (0, t, None))
            if locked is not None and locked > t:
                return False
            if locked is not None or start + window < t:
                count, start = 0, t
            count += 1
            self.attempts[key] = (count, start, t + window if count > limit else None)
            return count <= limit

    def forget_user(self, user_id: int) -> None:
        with self.lock:
            for tid in [k for k, v in self.sessions.items() if v[0] == user_id]:
                del self.sessions[tid]


_FULL = _FullDisk()


# -- sessions ---------------------------------------------------------------
def start_session(store: Store, user_id: int, hours: int, client: str = "") -> str:
    token = secrets.token_urlsafe(32)
    try:
        accounts.add_session(store, _token_id(token), user_id, hours, client)
    except StorageFull:
        row = accounts.user_by_id(store, user_id)
        log.warning("storage full: session of user %d kept in memory until the disk has room", user_id)
        with _FULL.lock:
            _FULL.sessions[_token_id(token)] = (user_id, accounts.utcnow() + timedelta(hours=hours),
                                                row["password_hash"])
    session.clear()
    session["sid"] = token
    session.permanent = True
    return token


def end_sessions(store: Store, user_id: int, conn=None) -> int:
    """Revoke every session of a user (password changed or reset, account deactivated)."""
    _FULL.forget_user(user_id)
    return accounts.end_sessions(store, user_id, conn=conn)


def current_user(store: Store):
    token = session.get("sid")
    if not token or not isinstance(token, str):
        return None
    tid = _token_id(token)
    row = None if tid in _FULL.revoked else accounts.session_user(store, tid)
    if row is None and tid in _FULL.sessions:
        user_id, expires, pw_hash = _FULL.sessions[tid]
        user = accounts.user_by_id(store, user_id)
        if user is not None and user["active"] and user["password_hash"] == pw_hash and expires > accounts.utcnow():
            row = user
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
    return accounts.create_user(store, username, generate_password_hash(password), role, by)


def create_first_admin(store: Store, username: str, password: str) -> int | None:
    """The administrator, only while no account exists (two forms cannot both win)."""
    return accounts.create_first_admin(store, username, generate_password_hash(password))


def set_password(store: Store, user_id: int, password: str, by: str, action: str) -> None:
    """A new password ends every session of that user."""
    accounts.set_password(store, user_id, generate_password_hash(password), by, action)


# -- sign-in ----------------------------------------------------------------
def authenticate(store: Store, username: str, password: str, client: str, max_failures: int,
                 lockout_minutes: int):
    """(user row, None) on success, else (None, reason) with reason "wrong", "locked" or "client-limit".
    The attempt is counted before the password is checked; the answer and its time never depend on whether
    the user name exists."""
    t = accounts.utcnow()
    try:
        refused = accounts.charge_attempt(store, username, client, CLIENT_MAX_FAILURES, CLIENT_WINDOW, max_failures,
                                          lockout_minutes, t)
    except StorageFull:  # the disk is full: count in memory instead (a lock already written still holds)
        window = timedelta(minutes=lockout_minutes)
        refused = ("client-limit" if not _FULL.charge(accounts.client_key(client), CLIENT_MAX_FAILURES,
                                                      CLIENT_WINDOW, t) else
                   "locked" if accounts.lock_status(store, username) or not _FULL.charge(
                       accounts.user_key(username), max_failures, window, t) else None)
    if refused:
        return None, refused
    row = accounts.user_by_name(store, username)
    ok = check_password_hash(row["password_hash"] if row is not None else _DUMMY_HASH, password)
    if ok and row is not None and row["active"]:
        with _FULL.lock:
            _FULL.attempts.pop(accounts.user_key(username), None)
        try:
            accounts.login_succeeded(store, row["username"], client)
        except StorageFull:
            log.warning("storage full: sign-in of %s not written to the audit log", row["username"])
        return row, None
    try:
        accounts.login_failed(store, username, t)
    except StorageFull:
        log.warning("storage full: failed sign-in for %r not written to the audit log", username)
    return None, "wrong"


def lock_status(store: Store, username: str) -> str | None:
    """When the user name's lock ends (ISO UTC), or None."""
    return accounts.lock_status(store, username)


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
            return redirect(url_for("samples.index"))
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
            return redirect(safe_next(request.args.get("next")) or url_for("samples.index"))
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
    try:
        if token and isinstance(token, str):
            with _FULL.lock:
                _FULL.sessions.pop(_token_id(token), None)
            accounts.end_session(store, _token_id(token))
        if g.user is not None:
            store.audit(g.user["username"], "logout")
    except StorageFull:  # the row stays on the full disk: refuse the token from now on anyway
        with _FULL.lock:
            _FULL.revoked.add(_token_id(token))
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
                accounts.set_language(store, g.user["id"], g.user["username"], lang)
                return redirect(url_for("auth.account"))
        else:
            row = accounts.user_by_id(store, g.user["id"])
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
    row = accounts.user_by_id(store, user_id)
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
            if accounts.user_by_name(store, username) is not None:
                error = _("That user name is taken.")
            else:
                create_user(store, username, password, role, g.user["username"])
                flash(_("User %(name)s created.", name=username))
                return redirect(url_for("auth.users"))
    rows = accounts.list_users(store)
    locks = {r["id"]: lock_status(store, r["username"]) for r in rows}
    return render_template("users.html", users=rows, locks=locks, error=error), 400 if error else 200


@bp.route("/users/<int:user_id>/<action>", methods=["POST"])
@admin_required
def user_action(user_id: int, action: str):
    store = runtime().store
    row = _user_or_404(store, user_id)
    me = g.user["username"]
    if action in ("deactivate", "reset-password", "sign-out") and user_id != g.user["id"]:
        _FULL.forget_user(user_id)
    if action == "unlock":
        accounts.unlock_user(store, user_id, row["username"], me)
        flash(_("%(name)s is unlocked.", name=row["username"]))
    elif action in ("deactivate", "reactivate"):
        if user_id == g.user["id"]:
            flash(_("You cannot deactivate your own account."), "error")
            return redirect(url_for("auth.users"))
        active = action == "reactivate"
        accounts.set_active(store, user_id, row["username"], active, me)
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
        accounts.sign_out_everywhere(store, user_id, row["username"], me)
        flash(_("%(name)s is signed out everywhere.", name=row["username"]))
    else:
        abort(404)
    return redirect(url_for("auth.users"))
