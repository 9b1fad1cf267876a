"""The district page (Flask): sign-in, every box's samples, a sample's cell gallery, the expert's verdict."""
from __future__ import annotations

import re
import secrets
from datetime import datetime, timezone
from functools import wraps
from pathlib import Path

from flask import Flask, Response, abort, flash, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect

from device.district import dicom
from device.district.link import Link, LinkError
from device.model import vocabulary  # the label vocabulary only (no capture, no analysis)
from district.accounts import AccountError, Accounts
from district.catalogue import Catalogue, gallery

VERDICTS = ("blasts confirmed", "no blasts: false alarm")


def create_app(link: Link, data_dir: Path, testing: bool = False) -> Flask:
    app = Flask(__name__)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    key = data_dir / "secret_key"
    if not key.exists():
        key.write_bytes(secrets.token_bytes(32))
        key.chmod(0o600)
    app.config.update(SECRET_KEY=key.read_bytes(), SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_NAME="leukoscope_district", WTF_CSRF_TIME_LIMIT=None, TESTING=testing)
    CSRFProtect(app)
    accounts = Accounts(data_dir / "accounts.db")
    catalogue = Catalogue(link)
    app.extensions["district"] = {"accounts": accounts, "catalogue": catalogue, "link": link}
    labels = _labels()

    def login_required(role: str | None = None):
        def deco(fn):
            @wraps(fn)
            def inner(*a, **kw):
                if g.user is None:
                    return redirect(url_for("login", next=request.path))
                if role and g.user["role"] != role:
                    return error(403, f"Only an account with the {role} role can do this.")
                return fn(*a, **kw)
            return inner
        return deco

    def error(code: int, message: str):
        return render_template("d_error.html", code=code, message=message), code

    @app.before_request
    def load_user():
        uid = session.get("uid")
        g.user = accounts.get(uid) if uid else None
        if accounts.count() == 0 and request.endpoint not in ("setup", "static"):
            return redirect(url_for("setup"))
        return None

    @app.after_request
    def headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
                                "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'")
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    @app.errorhandler(LinkError)
    def link_error(exc):
        return error(502, f"The district's Orthanc cannot be read: {exc}")

    @app.errorhandler(CSRFError)
    def csrf_error(exc):
        return error(400, "The form expired. Reload the page and try again.")

    @app.route("/setup", methods=["GET", "POST"])
    def setup():
        if accounts.count():
            return redirect(url_for("index"))
        if request.method == "POST":
            try:
                uid = accounts.create(request.form.get("username", ""), request.form.get("password", ""), "admin",
                                      request.form.get("full_name", ""))
            except AccountError as exc:
                flash(str(exc), "error")
            else:
                session["uid"] = uid
                return redirect(url_for("users"))
        return render_template("d_setup.html")

    @app.route("/login", methods=["GET", "POST"])
    def login():
        if request.method == "POST":
            row = accounts.check(request.form.get("username", ""), request.form.get("password", ""))
            if row is None:
                flash("Wrong user name or password.", "error")
                return render_template("d_login.html"), 401
            session.clear()
            session["uid"] = row["id"]
            nxt = request.args.get("next", "")
            return redirect(nxt if nxt.startswith("/") and not nxt.startswith("//") else url_for("index"))
        return render_template("d_login.html")

    @app.route("/logout", methods=["POST"])
    def logout():
        session.clear()
        return redirect(url_for("login"))

    @app.route("/users", methods=["GET", "POST"])
    @login_required("admin")
    def users():
        if request.method == "POST":
            try:
                accounts.create(request.form.get("username", ""), request.form.get("password", ""),
                                request.form.get("role", ""), request.form.get("full_name", ""))
                flash("Account created.")
            except AccountError as exc:
                flash(str(exc), "error")
            return redirect(url_for("users"))
        return render_template("d_users.html", users=accounts.all())

    @app.route("/")
    @login_required()
    def index():
        box = request.args.get("box", "")[:16]
        d_from, d_to = request.args.get("from", "")[:10], request.args.get("to", "")[:10]
        for d in (d_from, d_to):
            if d and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", d):
                return error(400, "Dates are written YYYY-MM-DD.")
        level = request.args.get("flag", "")
        level = level if level in ("refer", "review", "insufficient", "none") else ""
        samples = catalogue.samples(box, d_from, d_to, level)
        boxes = sorted({s.box for s in catalogue.samples()}) if box else sorted({s.box for s in samples})
        return render_template("d_index.html", samples=samples, boxes=boxes, box=box, d_from=d_from, d_to=d_to,
                               flag=level)

    def sample_or_404(study: str):
        if not re.fullmatch(r"[0-9.]{1,64}", study):
            abort(404)
        smp = catalogue.sample(study)
        if smp is None:
            abort(404)
        return smp

    @app.route("/samples/<study>")
    @login_required()
    def sample(study: str):
        smp = sample_or_404(study)
        return render_template("d_sample.html", s=smp, groups=gallery(smp.cells), labels=labels, verdicts=VERDICTS)

    @app.route("/samples/<study>/cells/<int:cell_id>.jpg")
    @login_required()
    def cell_image(study: str, cell_id: int):
        smp = sample_or_404(study)
        cell = next((c for c in smp.cells if c["id"] == cell_id), None)
        if cell is None:
            abort(404)
        return Response(catalogue.cell_jpeg(study, cell), mimetype="image/jpeg")

    @app.route("/samples/<study>/sign", methods=["POST"])
    @login_required("expert")
    def sign(study: str):
        smp = sample_or_404(study)
        choice = request.form.get("verdict", "")
        text = request.form.get("verdict_text", "").strip()[:300]
        verdict = choice if choice in VERDICTS else text
        if not verdict:
            return error(400, "Choose a verdict or write one.")
        cell_labels = {}
        for c in smp.cells:
            lbl = request.form.get(f"cell-{c['id']}")
            if lbl:
                if lbl not in labels:
                    return error(400, f"Unknown label {lbl!r}.")
                cell_labels[c["id"]] = lbl
        v = dicom.Verdict(verdict, g.user["full_name"] or g.user["username"], "expert",
                          request.form.get("note", "").strip()[:500],
                          datetime.now(timezone.utc).isoformat(timespec="seconds"), cell_labels)
        obj = dicom.verdict_object(catalogue.report_dataset(smp), v)
        link.store([dicom.to_bytes(obj)], [str(obj.SOPInstanceUID)])
        flash(f"Verdict signed and stored: {verdict}.")
        return redirect(url_for("sample", study=study))

    @app.context_processor
    def helpers():
        def display(name: str) -> str:
            try:
                return vocabulary.label(name).display
            except KeyError:
                return name

        return {"user": g.get("user"), "display": display}

    return app


def _labels() -> list[str]:
    """Every label of the vocabulary, blasts first (what an expert may choose for a cell)."""
    rank = {"malignant": 0, "atypical": 1, "normal": 2}
    names = list(vocabulary._vocabulary()[0])
    return sorted(names, key=lambda n: (rank.get(vocabulary.category_of(n), 3), n))
