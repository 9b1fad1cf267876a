"""The local web page: a Flask app factory. The only global state is the app it returns."""
from __future__ import annotations

import errno
import logging
import os
import secrets
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

from flask import Flask, g, redirect, request, url_for
from flask_babel import Babel
from flask_babel import gettext as _
from flask_wtf.csrf import CSRFError, CSRFProtect

from device.box.runtime import Runtime
from device.records.store import StoreError
from device.web import admin, auth, calibration, capture, common, district, exports, media, review, samples, words
from device.web.common import error_page

log = logging.getLogger("leukoscope.web")


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "full" in str(exc).lower()  # sqlite3: "database or disk is full"

# Reachable without signing in: everything else redirects to the login page.
PUBLIC_ENDPOINTS = {"auth.login", "auth.setup", "static", "health"}
MAX_UPLOAD_BYTES = 40 * 1024 * 1024
# What never waits for a capture in progress: the capture itself and what the operator watches it by.
CAPTURE_FIRST_EXEMPT = {"health", "static", "capture.capture", "capture.upload_field", "capture.status",
                        "media.preview_still", "media.preview", "capture.use_button"}
CAPTURE_FIRST_WAIT_S = 1.0
PAGE_WAIT_S = 0.3  # pages are light: they wait for a capture in progress only briefly
EXPORT_ENDPOINTS = {"exports.report_pdf", "exports.export_cells"}
EXPORT_WAIT_S = 30.0
_exporting = threading.BoundedSemaphore(1)
REQUEST_NICE = 5  # web-server threads: this much nicer than the capture thread (Linux threads each have one)
_niced = threading.local()


def _below_capture() -> None:
    """Lower this web-server thread's CPU priority once (a thread may raise its nice value, never lower it
    back unprivileged: the pool's threads stay below the capture loop's for good, which is the point)."""
    if getattr(_niced, "done", False):
        return
    _niced.done = True
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + REQUEST_NICE))
    except (OSError, AttributeError):
        pass
MAX_LIVE_VIEWS = 3  # concurrent MJPEG streams; each holds one of the server's threads


def _secret_key(data_dir: Path) -> bytes:
    """Created once, readable by the service only; sessions survive restarts."""
    path = data_dir / "secret_key"
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def create_app(runtime: Runtime, testing: bool = False) -> Flask:
    cfg = runtime.config
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=_secret_key(cfg.data_dir),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_NAME="leukoscope_session",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=cfg.web.session_hours),
        MAX_CONTENT_LENGTH=MAX_UPLOAD_BYTES,
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        TESTING=testing,
    )
    app.extensions["leukoscope"] = runtime
    app.extensions["leukoscope_streams"] = threading.BoundedSemaphore(MAX_LIVE_VIEWS)
    CSRFProtect(app)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(Path(__file__).parent / "translations")
    Babel(app, locale_selector=lambda: words.page_language(runtime),
          timezone_selector=lambda: runtime.config.web.time_zone)

    for blueprint in (auth.bp, samples.bp, capture.bp, review.bp, media.bp, exports.bp, admin.bp, calibration.bp):
        app.register_blueprint(blueprint)

    @app.context_processor
    def calibration_words():
        return {"calibration_note": lambda sample_id: calibration.note(runtime.store, sample_id),
                "site_text": calibration.site_text}
    app.add_url_rule("/health", "health", common.health)
    district.install(app, runtime)  # issue 25: send state and verdicts, district settings

    @app.before_request
    def storage_present():
        # the data folder deleted or replaced under us: refuse everything (no empty database,
        # no "first start" set-up page), and let the operator see why
        try:
            runtime.store.verify()
        except StoreError as exc:
            if request.endpoint not in ("health", "static"):
                return error_page(503, str(exc))
        if request.method == "POST":
            runtime.store.keep_reserve()  # nearly full: release the reserve before this request writes
        return None

    @app.before_request
    def operator_first():
        # One operator and a few viewers: a capture in progress gets the CPU first (page views and exports
        # wait for it, briefly; the web server's threads run below the capture thread's priority), and
        # exports -- the heaviest pages -- run one at a time.
        _below_capture()
        if request.endpoint in CAPTURE_FIRST_EXEMPT or request.endpoint is None:
            return None
        runtime.loop.wait_idle(CAPTURE_FIRST_WAIT_S if request.endpoint in EXPORT_ENDPOINTS else PAGE_WAIT_S)
        if request.endpoint in EXPORT_ENDPOINTS:
            if not _exporting.acquire(timeout=EXPORT_WAIT_S):
                body, code = error_page(503, _("Other exports are being prepared; try again in a moment."))
                return body, code, {"Retry-After": "5"}
            g.export_slot = True
            runtime.loop.wait_idle(CAPTURE_FIRST_WAIT_S)
        return None

    @app.teardown_request
    def export_done(exc):
        if g.pop("export_slot", False):
            _exporting.release()

    @app.before_request
    def require_login():
        g.user = auth.current_user(runtime.store)
        if request.endpoint in PUBLIC_ENDPOINTS:
            return None
        if not auth.has_users(runtime.store):
            return redirect(url_for("auth.setup"))
        if g.user is None:
            return redirect(url_for("auth.login", next=request.full_path if request.method == "GET" else None))
        return None

    @app.after_request
    def security_headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Content-Security-Policy",
                                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                                "frame-ancestors 'none'; form-action 'self'")
        if request.endpoint != "static":
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return error_page(400, _("The form expired or was not sent by this page. Reload the page and try again."))

    @app.errorhandler(413)
    def too_large(exc):
        return error_page(413, _("The upload is larger than %(mb)d MB.", mb=MAX_UPLOAD_BYTES // (1024 * 1024)))

    @app.errorhandler(403)
    def forbidden(exc):
        return error_page(403, _("Only an administrator can do this."))

    @app.errorhandler(404)
    def not_found(exc):
        return error_page(404, _("There is nothing at this address."))

    @app.errorhandler(405)
    def not_allowed(exc):
        return error_page(405, _("That action is not available here."))

    @app.errorhandler(StoreError)
    def store_error(exc):
        log.error("storage: %s", exc)
        return error_page(503, str(exc))

    @app.errorhandler(OSError)
    @app.errorhandler(sqlite3.OperationalError)
    def disk_full(exc):
        if not _is_disk_full(exc):
            log.exception("request failed")
            return error_page(500, "Something went wrong on the appliance. Nothing was lost; try again.")
        runtime.store.keep_reserve()
        log.error("storage full: %s", exc)
        return error_page(507, "The appliance's storage is full: nothing was changed. An administrator can "
                                     "export and delete old samples (History) to free space.")

    @app.errorhandler(500)
    def server_error(exc):
        return error_page(500, _("Something went wrong on the appliance. Nothing was lost; try again."))

    @app.context_processor
    def inject():
        return words.template_helpers(runtime) | {"clinic_name": runtime.config.web.clinic_name, "user": g.get("user"),
                                                  "scale_text": common.scale_text}

    return app
