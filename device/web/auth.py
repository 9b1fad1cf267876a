"""Accounts: first-start administrator, sign-in with a failed-login limit, operators, sign-out."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import wraps

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from werkzeug.security import check_password_hash, generate_password_hash

from device.store import Store, now

bp = Blueprint("auth", __name__)
USERNAME = re.compile(r"^[A-Za-z0-9._-]{2,40}$")
MIN_PASSWORD = 8


def runtime():
    return current_app.extensions["leukoscope"]


def has_users(store: Store) -> bool:
    return store.connect().execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None


def current_user(store: Store):
    uid = session.get("uid")
    if uid is None:
        return None
    row = store.connect().execute("SELECT id, username, role, active FROM users WHERE id = ?", (uid,)).fetchone()
    if row is None or not row["active"] or session.get("ver") != _session_version(row):
        session.clear()
        return None
    return row


def _session_version(row) -> str:
    return f"{row['id']}:{row['role']}"


def admin_required(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        if g.user is None or g.user["role"] != "admin":
            abort(403)
        return view(*args, **kwargs)

    return wrapped


def validate_new_account(username: str, password: str, confirm: str) -> str | None:
    if not USERNAME.match(username):
        return "User names are 2 to 40 letters, digits, dots, dashes or underscores."
    if len(password) < MIN_PASSWORD:
        return f"Passwords need at least {MIN_PASSWORD} characters."
    if len(password) > 200:
        return "That password is too long."
    if password != confirm:
        return "The two passwords differ."
    return None


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


def safe_next(target: str) -> str | None:
    """Only a path on this appliance: never another host (//host, /\\host, scheme:)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or ":" in target.split("?")[0]:
        return None
    return target


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
            session.clear()
            session.update(uid=uid, ver=f"{uid}:admin")
            session.permanent = True
            flash("Administrator created. Add operators under Users.")
            return redirect(url_for("views.index"))
    return render_template("setup.html", error=error), 400 if error else 200


@bp.route("/login", methods=["GET", "POST"])
def login():
    rt = runtime()
    store, web = rt.store, rt.config.web
    if not has_users(store):
        return redirect(url_for("auth.setup"))
    error = None
    if request.method == "POST":
        username = request.form.get("username", "").strip()[:100]
        password = request.form.get("password", "")[:500]
        row = store.connect().execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone()
        t = datetime.now(timezone.utc)
        if row is not None and row["locked_until"] and datetime.fromisoformat(row["locked_until"]) > t:
            error = "Too many failed sign-ins: this account is locked for a while. Ask the administrator."
            store.audit(username, "login-refused-locked")
        elif row is not None and row["active"] and check_password_hash(row["password_hash"], password):
            with store.transaction() as tx:
                tx.execute("UPDATE users SET failed_logins = 0, locked_until = NULL WHERE id = ?", (row["id"],))
                store.audit(row["username"], "login", conn=tx)
            session.clear()
            session.update(uid=row["id"], ver=_session_version(row))
            session.permanent = True
            return redirect(safe_next(request.args.get("next", "")) or url_for("views.index"))
        else:
            error = "Wrong user name or password."
            if row is not None:
                failed = row["failed_logins"] + 1
                locked = None
                if failed >= web.max_failed_logins:
                    locked = (t + timedelta(minutes=web.lockout_minutes)).isoformat(timespec="seconds")
                    failed = 0
                with store.transaction() as tx:
                    tx.execute("UPDATE users SET failed_logins = ?, locked_until = ? WHERE id = ?",
                               (failed, locked, row["id"]))
                    store.audit(username, "login-failed", detail={"locked": bool(locked)}, conn=tx)
            else:
                store.audit(username or "-", "login-failed", detail={"unknown_user": True})
    return render_template("login.html", error=error), 401 if error else 200


@bp.route("/logout", methods=["POST"])
def logout():
    if g.user is not None:
        runtime().store.audit(g.user["username"], "logout")
    session.clear()
    return redirect(url_for("auth.login"))


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
            error = "Unknown role."
        if error is None:
            if store.connect().execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                error = "That user name is taken."
            else:
                create_user(store, username, password, role, g.user["username"])
                flash(f"User {username} created.")
                return redirect(url_for("auth.users"))
    rows = store.connect().execute("SELECT id, username, role, active, created_at FROM users ORDER BY id").fetchall()
    return render_template("users.html", users=rows, error=error), 400 if error else 200
