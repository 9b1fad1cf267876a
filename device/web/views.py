"""The operator's pages: samples, capture, review, result, history, exports, settings."""
from __future__ import annotations

import io
import json
import re
import time

from flask import (Blueprint, Response, abort, current_app, flash, g, jsonify, redirect, render_template, request,
                   send_file, url_for)
from flask_babel import gettext as _

from device.model import vocabulary
from device.records import samples
from device.model.bundle import BundleError
from device.box.capture import CaptureError
from device.web import words
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
    ok, body = rt().health()
    return jsonify(body), 200 if ok else 503


def _text(name: str, limit: int = MAX_TEXT) -> str:
    value = request.form.get(name, "")
    if len(value) > limit:
        abort(Response(render_template("error.html", code=400,
                                       message=_("'%(name)s' is longer than %(n)d characters.", name=name, n=limit)),
                       400))
    return value.strip()


def _sample_or_404(sample_id: int):
    try:
        return samples.get_sample(rt().store, sample_id)
    except samples.RecordError:
        abort(404)


@bp.route("/")
def index(duplicates=None, form=None):
    store = rt().store
    open_samples = samples.search_samples(store, flag="open", limit=20)
    return render_template("index.html", open_samples=open_samples, target=rt().config.sample.target_cells,
                           state=rt().loop.state(), model=rt().bundle, duplicates=duplicates, form=form or {})


@bp.route("/samples", methods=["POST"])
def new_sample():
    r = rt()
    code = _text("sample_code", 64)
    if not code:
        flash(_("A sample id is required."), "error")
        return redirect(url_for("views.index"))
    age = _text("patient_age", 8)
    if age and not (re.fullmatch(r"\d{1,3}", age) and int(age) <= 120):
        flash(_("Age must be a whole number of years, from 0 to 120."), "error")
        return redirect(url_for("views.index"))
    sex = _text("patient_sex", 16)
    if sex not in ("", "female", "male", "other"):
        sex = "other"
    duplicates = samples.find_by_code(r.store, code)
    if duplicates and request.form.get("confirm_duplicate") != "1":
        # a second sample with the same id is allowed only deliberately: show the form again with a warning
        return index(duplicates=duplicates, form=request.form), 409
    sid = samples.create_sample(r.store, code, g.user["username"], g.user["id"], _text("patient_name", 120), age, sex,
                                _text("note", 1000), r.config.sample.target_cells, r.bundle.name, r.bundle.sha256)
    return redirect(url_for("views.sample", sample_id=sid))


@bp.route("/samples/<int:sample_id>")
def sample(sample_id: int):
    r = rt()
    s = _sample_or_404(sample_id)
    fields = samples.fields_of(r.store, sample_id)
    summary = samples.summary_of(r.store, sample_id, r.config.sample.flags)
    if s["status"] == "finished":
        cells = samples.cells_of(r.store, sample_id)
        highlighted = [c for c in samples.report_order(cells)
                       if samples.cell_final(c)[1] in ("malignant", "atypical", vocabulary.UNCERTAIN)
                       or samples.cell_reclassified(c) or c["flag"] == samples.POSSIBLE_BLAST]
        used = samples.models_of(r.store, sample_id)
        models_info = sample_models(r, s, used)
        return render_template("result.html", s=s, summary=summary, fields=fields, highlighted=highlighted[:48],
                               n_highlighted=len(highlighted), model=r.bundle, models_info=models_info,
                               screens=any(m["screens"] for m in models_info),
                               suspected=possible_blasts(cells), result=json.loads(s["result_json"] or "{}"),
                               reviewers=samples.reviewers_of(r.store, sample_id), models_used=used)
    last = fields[-1] if fields else None
    last_cells = samples.cells_of(r.store, sample_id, last["id"]) if last else []
    last_qc = json.loads(last["qc_json"] or "{}") if last else {}
    used = samples.models_of(r.store, sample_id)
    return render_template("capture.html", s=s, summary=summary, fields=fields, last=last, last_cells=last_cells,
                           last_scale=last_qc.get("scale") or None, repeat=_repeat_info(fields, last, last_qc),
                           held=len(samples.held_fields(r.store, sample_id)),
                           other_models=[m | {"label": f"{m['name']} {m['version']}".strip()} for m in used
                                         if m["sha256"] != r.bundle.sha256],
                           # the push-button's controls only where one is set up (or has been used)
                           has_button=(r.button is not None or bool(r.config.gpio.button_pin)
                                       or r.button_target is not None or bool(r.button_message)),
                           state=r.loop.state(), button_target=r.button_target, button_message=r.button_message)


def _repeat_info(fields, field, qc: dict) -> dict | None:
    """A field held as a repeated view: its id and the number (1, 2, ...) of the field it repeats."""
    if field is None or not qc.get("held"):
        return None
    ids = [f["id"] for f in fields]
    same = qc.get("repeat_of")
    return {"field_id": field["id"], "same_as": ids.index(same) + 1 if same in ids else 0}


def sample_models(r, s, used: list[dict]) -> list[dict]:
    """Each model that classified the sample (else the one in use), with its limits: a sample classified by two
    models shows both, never only the one in use now."""
    from device.model import installed as models

    out = []
    for u in used or [None]:
        bundle = models.bundle_of_sample(r.config.data_dir, [u] if u else [], r.bundle)
        out.append({"used": u, "bundle": bundle, "limits": words.model_limits(bundle),
                    "lead": words.limits_lead(bundle), "warnings": words.sample_warnings(bundle, s),
                    "screens": words.has_blasts(bundle) if bundle is not None else True})
    return out


def possible_blasts(cells) -> dict:
    """The cells the model suspected of being blasts, and how they were decided: they stay visible on the result
    and the report whatever a reviewer chose."""
    from collections import Counter

    suspected = [c for c in cells if c["flag"] == samples.POSSIBLE_BLAST]
    decided = Counter(c["operator_label"] for c in suspected if c["operator_label"])
    return {"n": len(suspected), "decided": sorted(decided.items(), key=lambda kv: -kv[1]),
            "undecided": sum(1 for c in suspected if not c["operator_label"])}


@bp.route("/samples/<int:sample_id>/button", methods=["POST"])
def use_button(sample_id: int):
    """Make this open sample the push-button's target (an explicit choice, shown on every capture page)."""
    s = _sample_or_404(sample_id)
    if s["status"] != "open":
        return error_page(409, "This sample is finished.")
    rt().choose_button_target(sample_id, s["sample_code"], g.user["username"])
    flash(f"The push-button now captures into {s['sample_code']}.")
    return redirect(url_for("views.sample", sample_id=sample_id))


def _count_panel(s, summary, n_fields: int) -> str:
    return render_template("_count.html", s=s, summary=summary, n_fields=n_fields,
                           held=len(samples.held_fields(rt().store, s["id"])))


@bp.route("/samples/<int:sample_id>/capture", methods=["POST"])
def capture(sample_id: int):
    s = _sample_or_404(sample_id)
    wants_json = request.accept_mimetypes.best == "application/json"
    if s["status"] != "open":
        return error_page(409, _("This sample is finished."))
    try:
        result = rt().loop.capture(sample_id, g.user["username"])
    except CaptureError as exc:
        if wants_json:
            return jsonify(error=str(exc)), 503
        flash(str(exc), "error")
        return redirect(url_for("views.sample", sample_id=sample_id))
    if wants_json:
        return jsonify(_capture_json(s, result))
    return redirect(url_for("views.sample", sample_id=sample_id))


def _capture_json(s, result: dict) -> dict:
    """The capture's result with its wording rendered here, in the page's language."""
    r = rt()
    sid = s["id"]
    result["image_url"] = url_for("views.field_image", sample_id=sid, field_id=result["field_id"])
    summary = samples.summary_of(r.store, sid, r.config.sample.flags)
    fields = samples.fields_of(r.store, sid)
    result["count_html"] = _count_panel(s, summary, len(fields))
    row = next((f for f in fields if f["id"] == result["field_id"]), None)
    repeat = _repeat_info(fields, row, json.loads(row["qc_json"] or "{}") if row is not None else {})
    result["repeat"] = repeat
    result["qc_html"] = render_template("_qc.html", ok=result["qc_ok"], message=result["qc_message"],
                                        n=len(result["cells"]), repeat=repeat, s=s, uploaded=result.get("uploaded"))
    sc = result.get("scale")
    result["scale_text"] = _scale_text(sc) if sc else ""
    return result


def _scale_text(sc: dict) -> str:
    return "· " + _("%(um)s um per pixel (%(how)s)", um="%.3f" % sc["um_per_px"], how=_(sc["source"]))


@bp.route("/samples/<int:sample_id>/upload", methods=["POST"])
def upload_field(sample_id: int):
    """A field photographed elsewhere (a phone on the eyepiece, a file): analysed like a capture."""
    from device.imageio import (ANALYSIS_MAX_PIXELS, MAX_FIELD_PIXELS, RETRY_AFTER_S, DecoderBusy, ImageError,
                                decode_image, upload_slot)

    s = _sample_or_404(sample_id)
    if s["status"] != "open":
        return error_page(409, _("This sample is finished."))
    f = request.files.get("image")
    if f is None or not f.filename:
        return error_page(400, _("Choose an image file to upload."))
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", f.filename)[:80]
    try:
        with upload_slot(name):  # decode and analysis: beyond the slots, 503 at once (the thread is freed)
            try:
                image = decode_image(f.read(), name=name, max_pixels=MAX_FIELD_PIXELS, wait=2.0,
                                     fit=ANALYSIS_MAX_PIXELS)
            except DecoderBusy:
                raise
            except ImageError as exc:
                return error_page(415, words.image_error(str(exc)))
            try:
                result = rt().loop.capture(sample_id, g.user["username"], image=image, source=f"upload:{name}")
            except CaptureError as exc:
                return error_page(503, str(exc))
            finally:
                del image
    except DecoderBusy as exc:
        body, code = error_page(503, words.image_error(str(exc)))
        return body, code, {"Retry-After": str(RETRY_AFTER_S)}
    if request.accept_mimetypes.best == "application/json":
        return jsonify(_capture_json(s, result | {"uploaded": True}))
    return redirect(url_for("views.sample", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/fields/<int:field_id>/repeat", methods=["POST"])
def repeated_field(sample_id: int, field_id: int):
    """A field held as a repeated view: count it after all (it is a new view) or discard it."""
    r = rt()
    _sample_or_404(sample_id)
    try:
        if request.form.get("action") == "count":
            samples.count_repeated_field(r.store, sample_id, field_id, g.user["username"])
            flash(_("The field is counted as a new view."))
        else:
            samples.discard_repeated_field(r.store, sample_id, field_id, g.user["username"])
            flash(_("The repeated view was discarded; nothing of it was counted."))
    except samples.RecordError as exc:
        return error_page(409, _(str(exc)))
    return redirect(url_for("views.sample", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/fields/<int:field_id>.jpg")
def field_image(sample_id: int, field_id: int):
    row = samples.field_of(rt().store, sample_id, field_id)
    if row is None:
        abort(404)
    return _send_stored(row["image_path"])


@bp.route("/cells/<int:cell_id>.jpg")
def cell_image(cell_id: int):
    row = samples.cell_of(rt().store, cell_id)
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
        return error_page(503, _("The camera is not available."))
    return Response(jpeg, mimetype="image/jpeg")


@bp.route("/api/status")
def status():
    r = rt()
    state = r.loop.state()
    camera = state["camera"]
    return jsonify(camera=camera, camera_text=_(camera["status"]), busy=r.loop.busy, model=r.bundle.name,
                   model_problems=r.model_problems, captures=r.loop.captures, loop_error=state["error"],
                   button_sample=r.button_target[0] if r.button_target else None, button_message=r.button_message)


REVIEW_PAGE = 24  # cells per review page: a page the 800x480 screen can scroll in a few swipes


def review_labels(bundle) -> list[str]:
    extra = [n for n in ("lymphoblast", "myeloblast", "atypical-lymphocyte", "smudge-cell") if n not in bundle.labels]
    return sorted(list(bundle.labels) + extra, key=lambda n: (samples.GROUP_ORDER.index(vocabulary.category_of(n)),
                                                              words.display(n)))


def quick_labels(cell, keyed: list[str], n: int = 3) -> list[str]:
    """The one-tap buttons of a card: the model's most probable classes, then a blast, if not among them."""
    try:
        probs = json.loads(cell["probabilities_json"] or "{}")
    except ValueError:
        probs = {}
    top = [k for k, _v in sorted(probs.items(), key=lambda kv: -kv[1]) if k in keyed][:n]
    blast = next((k for k in keyed if vocabulary.category_of(k) == "malignant"), None)
    if blast and not any(vocabulary.category_of(k) == "malignant" for k in top):
        top.append(blast)
    return top


@bp.route("/samples/<int:sample_id>/review")
def review(sample_id: int):
    r = rt()
    s = _sample_or_404(sample_id)
    cells = samples.cells_of(r.store, sample_id)
    groups = samples.review_groups(cells)
    flat = [(g, c) for g in groups for c in g["cells"]]
    pages = max(1, -(-len(flat) // REVIEW_PAGE))
    page = min(max(1, request.args.get("page", 1, type=int)), pages)
    shown = flat[(page - 1) * REVIEW_PAGE: page * REVIEW_PAGE]
    page_groups: list[dict] = []
    for g, c in shown:
        if not page_groups or page_groups[-1]["group"] is not g:
            page_groups.append({"group": g, "cells": []})
        page_groups[-1]["cells"].append(c)
    starts, i = {}, 0
    for g in groups:  # the page each group starts on, for the index
        starts[g["label"]] = i // REVIEW_PAGE + 1
        i += len(g["cells"])
    labels = review_labels(r.bundle)
    keyed = [n for n in labels if n in r.bundle.labels][:9]  # keys 1-9: the model's own classes
    summary = samples.summary_of(r.store, sample_id, r.config.sample.flags)
    return render_template("review.html", s=s, groups=groups, page_groups=page_groups, page=page, pages=pages,
                           starts=starts, labels=labels, keyed=keyed, quick=lambda c: quick_labels(c, labels),
                           left=sum(c["operator_label"] is None for c in cells), summary=summary,
                           screens=words.has_blasts(r.bundle))


@bp.route("/cells/<int:cell_id>/review", methods=["POST"])
def review_cell(cell_id: int):
    r = rt()
    label = request.form.get("label", "") or request.form.get("label_other", "")
    row = samples.cell_of(r.store, cell_id)
    if row is None:
        abort(404)
    confirm = request.form.get("confirm") == "1"
    if confirm:
        label = row["label"]  # Confirm accepts the model's label; the records layer refuses it for uncertain cells
    wants_json = request.accept_mimetypes.best == "application/json"
    if not label:
        msg = _("Choose the cell type first.")
        return (jsonify(error=msg), 400) if wants_json else error_page(400, msg)
    try:
        samples.review_cell(r.store, cell_id, label, g.user["username"], g.user["id"],
                            confirm=confirm)
    except (samples.RecordError, KeyError) as exc:
        msg = _(str(exc).strip('"')) if not isinstance(exc, KeyError) else _("Unknown label.")
        return (jsonify(error=msg), 400) if wants_json else error_page(400, msg)
    if wants_json:
        summary = samples.summary_of(r.store, row["sample_id"], r.config.sample.flags)
        s = samples.get_sample(r.store, row["sample_id"])
        final = label if not confirm else row["label"]
        return jsonify(ok=True, summary=summary.to_dict(), label=final, display=words.display(final),
                       category=samples.category_of(final),
                       live_html=render_template("_live.html", summary=summary, s=s))
    page = request.form.get("page", type=int) or 1
    return redirect(url_for("views.review", sample_id=row["sample_id"], page=page) + f"#cell-{cell_id}")


@bp.route("/samples/<int:sample_id>/accept", methods=["POST"])
def accept_class(sample_id: int):
    """Confirm every unreviewed cell the model confidently called one class."""
    r = rt()
    _sample_or_404(sample_id)
    label = request.form.get("label", "")
    try:
        n = samples.accept_class(r.store, sample_id, label, g.user["username"], g.user["id"])
    except (samples.RecordError, KeyError) as exc:
        return error_page(400, _(str(exc).strip('"')) if not isinstance(exc, KeyError) else _("Unknown label."))
    flash(_("%(cells)s accepted as %(label)s.", cells=words.cells(n), label=words.display(label)))
    return redirect(url_for("views.review", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/accept-above", methods=["POST"])
def accept_above(sample_id: int):
    """The reviewer's explicit choice: accept the model's guess for every normal cell called with at least P %."""
    r = rt()
    _sample_or_404(sample_id)
    p = request.form.get("min_percent", type=float)
    if p is None:
        return error_page(400, _("Give the lowest model probability to accept, in per cent."))
    try:
        n = samples.accept_confident(r.store, sample_id, p / 100.0, g.user["username"], g.user["id"])
    except samples.RecordError as exc:
        return error_page(400, _(str(exc)))
    flash(_("%(cells)s of normal classes accepted as the model called them (model %(p)s %% or more).",
            cells=words.cells(n), p="%g" % p))
    return redirect(url_for("views.review", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/finish", methods=["GET", "POST"])
def finish(sample_id: int):
    """Finishing asks first: the page shows the unreviewed cells and whether the target was reached."""
    r = rt()
    s = _sample_or_404(sample_id)
    if s["status"] != "open":
        return redirect(url_for("views.sample", sample_id=sample_id))
    summary = samples.summary_of(r.store, sample_id, r.config.sample.flags)
    if request.method == "GET" or request.form.get("confirmed") != "1":
        return render_template("finish.html", s=s, summary=summary)
    try:
        samples.finish_sample(r.store, sample_id, g.user["username"], r.config.sample.flags,
                              verified_by=_text("verified_by", 120))
    except samples.RecordError as exc:
        return error_page(409, _(str(exc)))
    r.sample_finished(sample_id)  # the push-button no longer captures into it
    return redirect(url_for("views.sample", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/reopen", methods=["POST"])
@admin_required
def reopen(sample_id: int):
    _sample_or_404(sample_id)
    try:
        samples.reopen_sample(rt().store, sample_id, g.user["username"], _text("reason", 200))
    except samples.RecordError as exc:
        return error_page(409, _(str(exc)))
    flash(_("Sample re-opened for amendment. Finish it again when the changes are made."))
    return redirect(url_for("views.review", sample_id=sample_id))


@bp.route("/history")
def history():
    q = request.args.get("q", "")[:100]
    date_from = request.args.get("from", "")[:10]
    date_to = request.args.get("to", "")[:10]
    for d in (date_from, date_to):
        if d and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", d):
            return error_page(400, _("Dates are written YYYY-MM-DD."))
    flag = request.args.get("flag", "")
    flag = flag if flag in ("", "refer", "review", "insufficient", "none", "open") else ""
    rows = samples.search_samples(rt().store, q, date_from, date_to, flag)
    results = {r["id"]: json.loads(r["result_json"]) if r["result_json"] else None for r in rows}
    return render_template("history.html", rows=rows, results=results, q=q, date_from=date_from, date_to=date_to,
                           flag=flag)


def _download_name(s, ext: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", s["sample_code"]).strip("._")[:60] or f"sample-{s['id']}"
    return f"leukoscope-{safe}.{ext}"


@bp.route("/samples/<int:sample_id>/report.pdf")
def report_pdf(sample_id: int):
    from device.web.report import sample_pdf

    r = rt()
    s = _sample_or_404(sample_id)
    from device.model import installed as models

    used = samples.models_of(r.store, s["id"])
    pdf = sample_pdf(r.store, s, r.config, models.bundle_of_sample(r.config.data_dir, used, r.bundle),
                     models_info=sample_models(r, s, used))
    r.store.audit(g.user["username"], "export-pdf", f"sample:{sample_id}")
    return send_file(io.BytesIO(pdf), mimetype="application/pdf", as_attachment=True,
                     download_name=_download_name(s, "pdf"))


@bp.route("/samples/<int:sample_id>/cells.<fmt>")
def export_cells(sample_id: int, fmt: str):
    from device.web.report import cells_csv, cells_json

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
    samples.delete_sample(rt().store, sample_id, g.user["username"], _text("reason", 200))
    flash(_("Sample deleted."))
    return redirect(url_for("views.history"))


AUDIT_PAGE = 100


@bp.route("/audit")
@admin_required
def audit():
    """The audit log, newest first, a page at a time (``before``: older than that entry), searchable."""
    q = request.args.get("q", "")[:100]
    before = request.args.get("before", type=int)
    rows = samples.recent_audit(rt().store, AUDIT_PAGE + 1, before, q)
    more = len(rows) > AUDIT_PAGE
    rows = rows[:AUDIT_PAGE]
    return render_template("audit.html", rows=rows, q=q, before=before,
                           older=rows[-1]["id"] if more and rows else None,
                           last_backup=samples.last_backup(rt().store))


@bp.route("/backup.tar.gz", methods=["POST"])
@admin_required
def backup_download():
    """An online snapshot of the records and images (the same as ``leukoscope backup``), as one download."""
    import tarfile
    import tempfile
    from pathlib import Path

    from device.records.backup import BackupError, backup

    r = rt()
    with tempfile.TemporaryDirectory(prefix="leukoscope-backup-") as tmp:
        dest = Path(tmp) / "snapshot"
        try:
            manifest = backup(Path(r.config.data_dir), dest)
        except BackupError as exc:
            return error_page(409, str(exc))
        out = tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024)
        with tarfile.open(fileobj=out, mode="w:gz") as tar:
            for path in sorted(dest.rglob("*")):
                if path.is_file() and path.name != "secret_key":  # the session key never leaves the box
                    tar.add(path, arcname=str(Path("leukoscope-backup") / path.relative_to(dest)))
        out.seek(0)
    r.store.audit(g.user["username"], "backup-downloaded", detail={"counts": manifest["counts"],
                                                                   "files": manifest["files"]})
    stamp = time.strftime("%Y%m%d-%H%M", time.gmtime())
    return send_file(out, mimetype="application/gzip", as_attachment=True,
                     download_name=f"leukoscope-backup-{stamp}.tar.gz")


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
            error = words.config_error(exc)
        else:
            if new == r.config:
                flash(_("Nothing changed: the settings are as they were."))
                return redirect(url_for("views.settings"))
            applied = r.apply_config(new)
            r.store.audit(g.user["username"], "settings-changed", detail=changes)
            flash(_("Settings saved: %(what)s.", what=", ".join(_(a) for a in applied)))
            return redirect(url_for("views.settings"))
    values = st.form_values(r.config, request.form if error else None)
    return render_template("settings.html", fields=st.EDITABLE, values=values,
                           flags_toml=request.form.get("flags_toml") if error else st.flags_toml(r.config),
                           model=r.bundle,
                           problems=r.model_problems + ([r.store.reserve_problem] if r.store.reserve_problem else []),
                           error=error, shipped=_shipped(r),
                           measured=samples.last_camera_scale(r.store), language_names=LANGUAGE_NAMES,
                           last_backup=samples.last_backup(r.store)), \
        400 if error else 200


LANGUAGE_NAMES = {"en": "English", "fr": "Français", "ar": "العربية"}  # each in its own language


def _shipped(r) -> list[dict]:
    from device.model import installed as models

    return [{"stem": stem, "name": b.name, "version": b.metadata.get("version", ""), "task": b.metadata.get("task", ""),
             "in_use": b.sha256 == r.bundle.sha256, "has_blasts": "malignant" in b.categories}
            for stem, b in models.builtin(r.config.data_dir)]


@bp.route("/settings/scale", methods=["POST"])
@admin_required
def keep_scale():
    """Keep the scale last measured from the red cells as the configured pixel size (the value used
    for fields with too few red cells)."""
    from device import settings as st
    from device.config import ConfigError

    r = rt()
    # only a reading from this box's own camera: an uploaded photograph was taken through another optic
    measured = samples.last_camera_scale(r.store)
    if measured is None:
        return error_page(409, _("No field has been measured yet: capture a field with red cells first."))
    value = round(measured["um_per_px"], 5)
    try:
        new = st.save_overrides(r.config, {"camera": {"um_per_pixel": value}})
    except ConfigError as exc:
        return error_page(400, words.config_error(exc))
    r.apply_config(new)
    r.store.audit(g.user["username"], "settings-changed", detail={"camera": {"um_per_pixel": value},
                                                                 "from": "last measured scale",
                                                                 "field": measured["field_id"],
                                                                 "confidence": measured.get("confidence")})
    flash(_("Pixel size set to %(um)s um per pixel, as measured.", um=value))
    return redirect(url_for("views.settings"))


@bp.route("/settings/model/builtin", methods=["POST"])
@admin_required
def use_builtin_model():
    from device.model import installed as models

    r = rt()
    stem = request.form.get("builtin", "")
    try:
        bundle = models.install_builtin(stem, r.config.data_dir, r.config.model.threads)
    except BundleError as exc:
        return error_page(400, _("Model refused, the current model stays in use: %(why)s", why=str(exc)))
    r.store.audit(g.user["username"], "model-installed", detail={"name": bundle.name, "sha256": bundle.sha256,
                                                                  "shipped": stem})
    flash(_(MODEL_SWITCHED, name=bundle.name))
    return redirect(url_for("views.settings"))


MODEL_SWITCHED = ("Model %(name)s installed: it classifies every field captured from now on (within a few seconds, "
                  "no restart). Fields already captured keep the model that classified them; a sample classified "
                  "by two models shows the limits of both.")


@bp.route("/settings/model", methods=["POST"])
@admin_required
def upload_model():
    from device.model import installed as models
    r = rt()
    f = request.files.get("bundle")
    if f is None or not f.filename:
        return error_page(400, _("Choose a model bundle file (.lkb) to upload."))
    data = f.read()
    try:
        bundle = models.install(data, r.config.data_dir, r.config.model.threads)
    except BundleError as exc:
        r.store.audit(g.user["username"], "model-refused", detail={"file": f.filename[:100], "reason": str(exc)})
        return error_page(400, _("Model refused, the current model stays in use: %(why)s", why=str(exc)))
    r.store.audit(g.user["username"], "model-installed", detail={"name": bundle.name, "sha256": bundle.sha256})
    flash(_(MODEL_SWITCHED, name=bundle.name))
    return redirect(url_for("views.settings"))
