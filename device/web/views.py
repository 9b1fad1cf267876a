"""The operator's pages: samples, capture, review, result, history, exports, settings."""
from __future__ import annotations

import io
import json
import re
import time

from flask import (Blueprint, Response, abort, current_app, flash, g, jsonify, redirect, render_template, request,
                   send_file, url_for)

from device import labels as vocab
from device import records
from device.bundle import BundleError
from device.capture import CaptureError
from device.web.auth import admin_required

bp = Blueprint("views", __name__)
MAX_TEXT = 500


def rt():
    return current_app.extensions["leukoscope"]


def error_page(code: int, message: str):
    if request.accept_mimetypes.best == "application/json" or request.path.startswith("/api/") or request.is_json:
        return jsonify(error=message), code
    return render_template("error.html", code=code, message=message), code


def health():
    r = rt()
    state = r.loop.state()
    ok = state["alive"]
    cam = state["camera"]
    # the camera's name and its last error say why a box shows no live view, without signing in
    return jsonify(ok=ok, camera=cam["status"], camera_name=cam["name"], camera_error=cam["error"],
                   model=r.bundle.name), 200 if ok else 503


def _text(name: str, limit: int = MAX_TEXT) -> str:
    value = request.form.get(name, "")
    if len(value) > limit:
        abort(Response(render_template("error.html", code=400, message=f"'{name}' is longer than {limit} characters."),
                       400))
    return value.strip()


def _sample_or_404(sample_id: int):
    try:
        return records.get_sample(rt().store, sample_id)
    except records.RecordError:
        abort(404)


@bp.route("/")
def index():
    store = rt().store
    open_samples = records.search_samples(store, flag="open", limit=20)
    return render_template("index.html", open_samples=open_samples, target=rt().config.sample.target_cells,
                           state=rt().loop.state(), model=rt().bundle)


@bp.route("/samples", methods=["POST"])
def new_sample():
    r = rt()
    code = _text("sample_code", 64)
    if not code:
        flash("A sample id is required.", "error")
        return redirect(url_for("views.index"))
    age = _text("patient_age", 8)
    if age and not re.fullmatch(r"\d{1,3}", age):
        flash("Age must be a whole number of years.", "error")
        return redirect(url_for("views.index"))
    sex = _text("patient_sex", 16)
    if sex not in ("", "female", "male", "other"):
        sex = "other"
    sid = records.create_sample(r.store, code, g.user["username"], g.user["id"], _text("patient_name", 120), age, sex,
                                _text("note", 1000), r.config.sample.target_cells, r.bundle.name, r.bundle.sha256)
    return redirect(url_for("views.sample", sample_id=sid))


@bp.route("/samples/<int:sample_id>")
def sample(sample_id: int):
    r = rt()
    s = _sample_or_404(sample_id)
    fields = records.fields_of(r.store, sample_id)
    summary = records.summary_of(r.store, sample_id, r.config.sample.flags)
    if s["status"] == "finished":
        cells = records.cells_of(r.store, sample_id)
        highlighted = [c for c in cells if c["operator_label"] and c["operator_label"] != c["label"]
                       or vocab.category_of(c["operator_label"] or c["label"]) in ("malignant", "atypical")
                       or (c["flag"] and not c["operator_label"])]
        return render_template("result.html", s=s, summary=summary, fields=fields, highlighted=highlighted[:48],
                               model=r.bundle)
    r.active = (sample_id, g.user["username"])  # the push-button now captures into this sample
    last = fields[-1] if fields else None
    last_cells = records.cells_of(r.store, sample_id, last["id"]) if last else []
    return render_template("capture.html", s=s, summary=summary, fields=fields, last=last, last_cells=last_cells,
                           state=r.loop.state())


@bp.route("/samples/<int:sample_id>/capture", methods=["POST"])
def capture(sample_id: int):
    s = _sample_or_404(sample_id)
    wants_json = request.accept_mimetypes.best == "application/json"
    if s["status"] != "open":
        return error_page(409, "This sample is finished.")
    try:
        result = rt().loop.capture(sample_id, g.user["username"])
    except CaptureError as exc:
        if wants_json:
            return jsonify(error=str(exc)), 503
        flash(str(exc), "error")
        return redirect(url_for("views.sample", sample_id=sample_id))
    if wants_json:
        result["image_url"] = url_for("views.field_image", sample_id=sample_id, field_id=result["field_id"])
        return jsonify(result)
    if not result["qc_ok"]:
        flash(f"Field not analysed: {result['qc_message']}", "error")
    return redirect(url_for("views.sample", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/upload", methods=["POST"])
def upload_field(sample_id: int):
    """A field photographed elsewhere (a phone on the eyepiece, a file): analysed like a capture."""
    from device.imageio import ImageError, decode_image

    s = _sample_or_404(sample_id)
    if s["status"] != "open":
        return error_page(409, "This sample is finished.")
    f = request.files.get("image")
    if f is None or not f.filename:
        return error_page(400, "Choose an image file to upload.")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f.filename)[:80]
    try:
        image = decode_image(f.read(), name=name)
    except ImageError as exc:
        return error_page(415, str(exc))
    try:
        result = rt().loop.capture(sample_id, g.user["username"], image=image, source=f"upload:{name}")
    except CaptureError as exc:
        return error_page(503, str(exc))
    if request.accept_mimetypes.best == "application/json":
        result["image_url"] = url_for("views.field_image", sample_id=sample_id, field_id=result["field_id"])
        return jsonify(result)
    if not result["qc_ok"]:
        flash(f"Field not analysed: {result['qc_message']}", "error")
    return redirect(url_for("views.sample", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/fields/<int:field_id>.jpg")
def field_image(sample_id: int, field_id: int):
    row = rt().store.connect().execute("SELECT image_path FROM fields WHERE id = ? AND sample_id = ?",
                                       (field_id, sample_id)).fetchone()
    if row is None:
        abort(404)
    return _send_stored(row["image_path"])


@bp.route("/cells/<int:cell_id>.jpg")
def cell_image(cell_id: int):
    row = rt().store.connect().execute("SELECT crop_path FROM cells WHERE id = ?", (cell_id,)).fetchone()
    if row is None:
        abort(404)
    return _send_stored(row["crop_path"])


def _send_stored(rel: str):
    """A stored image, never anything outside the data folder whatever the database says."""
    try:
        path = rt().store.path(rel)
    except ValueError:
        abort(404)
    if not path.is_file():
        abort(404)
    return send_file(path, mimetype="image/jpeg")


@bp.route("/preview.mjpg")
def preview():
    loop = rt().loop
    boundary = "frame"
    streams = current_app.extensions["leukoscope_streams"]  # each live view holds a server thread
    if not streams.acquire(blocking=False):
        return preview_still()  # more viewers than allowed: a still frame; the page refreshes it

    def stream():
        last, t_end = None, time.monotonic() + 300  # bounded: the page reconnects
        while time.monotonic() < t_end:
            jpeg = loop.next_preview(last, wait=1.0)
            if jpeg is None or jpeg is last:
                continue
            last = jpeg
            yield (f"--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                   ).encode() + jpeg + b"\r\n"

    resp = Response(stream(), mimetype=f"multipart/x-mixed-replace; boundary={boundary}")
    resp.call_on_close(streams.release)  # the server closes every response, even one never read
    return resp


@bp.route("/preview.jpg")
def preview_still():
    jpeg = rt().loop.preview_jpeg(wait=2.0)
    if jpeg is None:
        return error_page(503, "The camera is not available.")
    return Response(jpeg, mimetype="image/jpeg")


@bp.route("/api/status")
def status():
    r = rt()
    return jsonify(camera=r.loop.state()["camera"], busy=r.loop.busy, model=r.bundle.name,
                   model_problems=r.model_problems, captures=r.loop.captures,
                   active_sample=r.active[0] if r.active else None)


@bp.route("/samples/<int:sample_id>/review")
def review(sample_id: int):
    r = rt()
    s = _sample_or_404(sample_id)
    cells = records.cells_of(r.store, sample_id)
    # uncertain first, then the least confident
    cells = sorted(cells, key=lambda c: (c["operator_label"] is not None, c["flag"] is None, c["probability"]))
    labels = [vocab.label(n) for n in r.bundle.labels]
    extra = [vocab.label(n) for n in ("lymphoblast", "myeloblast", "atypical-lymphocyte", "smudge-cell")
             if n not in r.bundle.labels]
    return render_template("review.html", s=s, cells=cells, labels=labels + extra,
                           summary=records.summary_of(r.store, sample_id, r.config.sample.flags))


@bp.route("/cells/<int:cell_id>/review", methods=["POST"])
def review_cell(cell_id: int):
    r = rt()
    label = request.form.get("label", "")
    row = r.store.connect().execute("SELECT sample_id, label FROM cells WHERE id = ?", (cell_id,)).fetchone()
    if row is None:
        abort(404)
    wants_json = request.accept_mimetypes.best == "application/json"
    if not label:
        msg = "Choose the cell type first."
        return (jsonify(error=msg), 400) if wants_json else error_page(400, msg)
    try:
        records.review_cell(r.store, cell_id, label, g.user["username"], g.user["id"])
    except (records.RecordError, KeyError) as exc:
        msg = str(exc).strip('"') if not isinstance(exc, KeyError) else "Unknown label."
        return (jsonify(error=msg), 400) if wants_json else error_page(400, msg)
    if wants_json:
        return jsonify(ok=True, summary=records.summary_of(r.store, row["sample_id"], r.config.sample.flags).to_dict())
    return redirect(url_for("views.review", sample_id=row["sample_id"]) + f"#cell-{cell_id}")


@bp.route("/samples/<int:sample_id>/finish", methods=["POST"])
def finish(sample_id: int):
    _sample_or_404(sample_id)
    try:
        records.finish_sample(rt().store, sample_id, g.user["username"], rt().config.sample.flags)
    except records.RecordError as exc:
        return error_page(409, str(exc))
    return redirect(url_for("views.sample", sample_id=sample_id))


@bp.route("/history")
def history():
    q = request.args.get("q", "")[:100]
    date_from = request.args.get("from", "")[:10]
    date_to = request.args.get("to", "")[:10]
    for d in (date_from, date_to):
        if d and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", d):
            return error_page(400, "Dates are written YYYY-MM-DD.")
    flag = request.args.get("flag", "")
    flag = flag if flag in ("", "refer", "review", "none", "open") else ""
    rows = records.search_samples(rt().store, q, date_from, date_to, flag)
    results = {r["id"]: json.loads(r["result_json"]) if r["result_json"] else None for r in rows}
    return render_template("history.html", rows=rows, results=results, q=q, date_from=date_from, date_to=date_to,
                           flag=flag)


def _download_name(s, ext: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", s["sample_code"]).strip("._")[:60] or f"sample-{s['id']}"
    return f"leukoscope-{safe}.{ext}"


@bp.route("/samples/<int:sample_id>/report.pdf")
def report_pdf(sample_id: int):
    from device.report import sample_pdf

    r = rt()
    s = _sample_or_404(sample_id)
    pdf = sample_pdf(r.store, s, r.config, r.bundle)
    r.store.audit(g.user["username"], "export-pdf", f"sample:{sample_id}")
    return send_file(io.BytesIO(pdf), mimetype="application/pdf", as_attachment=True,
                     download_name=_download_name(s, "pdf"))


@bp.route("/samples/<int:sample_id>/cells.<fmt>")
def export_cells(sample_id: int, fmt: str):
    from device.report import cells_csv, cells_json

    if fmt not in ("csv", "json"):
        abort(404)
    r = rt()
    s = _sample_or_404(sample_id)
    body = cells_csv(r.store, s) if fmt == "csv" else cells_json(r.store, s, r.config)
    r.store.audit(g.user["username"], f"export-{fmt}", f"sample:{sample_id}")
    mime = "text/csv" if fmt == "csv" else "application/json"
    return send_file(io.BytesIO(body.encode()), mimetype=mime, as_attachment=True, download_name=_download_name(s, fmt))


@bp.route("/samples/<int:sample_id>/delete", methods=["POST"])
@admin_required
def delete(sample_id: int):
    _sample_or_404(sample_id)
    records.delete_sample(rt().store, sample_id, g.user["username"], _text("reason", 200))
    flash("Sample deleted.")
    return redirect(url_for("views.history"))


@bp.route("/audit")
@admin_required
def audit():
    rows = rt().store.connect().execute("SELECT * FROM audit ORDER BY id DESC LIMIT 300").fetchall()
    return render_template("audit.html", rows=rows)


@bp.route("/settings", methods=["GET", "POST"])
@admin_required
def settings():
    from device import settings as st
    from device.config import ConfigError

    r = rt()
    error = None
    if request.method == "POST":
        try:
            changes = st.parse_form(request.form, r.config)
            new = st.save_overrides(r.config, changes)
        except ConfigError as exc:
            error = str(exc)
        else:
            applied = r.apply_config(new)
            r.store.audit(g.user["username"], "settings-changed", detail=changes)
            flash("Settings saved: " + ", ".join(applied) + ".")
            return redirect(url_for("views.settings"))
    values = {f"{s}.{k}": getattr(getattr(r.config, s), k) for s, k, _, _ in st.EDITABLE}
    return render_template("settings.html", fields=st.EDITABLE, values=values,
                           flags_toml=request.form.get("flags_toml") if error else st.flags_toml(r.config),
                           model=r.bundle, problems=r.model_problems, error=error), 400 if error else 200


@bp.route("/settings/model", methods=["POST"])
@admin_required
def upload_model():
    from device import models

    r = rt()
    f = request.files.get("bundle")
    if f is None or not f.filename:
        return error_page(400, "Choose a model bundle file (.lkb) to upload.")
    data = f.read()
    try:
        bundle = models.install(data, r.config.data_dir, r.config.model.threads)
    except BundleError as exc:
        r.store.audit(g.user["username"], "model-refused", detail={"file": f.filename[:100], "reason": str(exc)})
        return error_page(400, f"Model refused, the current model stays in use: {exc}")
    r.store.audit(g.user["username"], "model-installed", detail={"name": bundle.name, "sha256": bundle.sha256})
    flash(f"Model {bundle.name} installed; it is used after the appliance restarts.")
    return redirect(url_for("views.settings"))
