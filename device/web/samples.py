"""The samples: the start page and a new sample, a sample's page (capture while open, the result once finished),
finishing and re-opening, the history, deleting."""
from __future__ import annotations

import json
import re

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from device.records import repeats, samples
from device.web.auth import admin_required
from device.web.common import error_page, form_text, rt, sample_models, sample_or_404

bp = Blueprint("samples", __name__)


@bp.route("/")
def index(duplicates=None, form=None):
    store = rt().store
    open_samples = samples.search_samples(store, flag="open", limit=20)
    return render_template("index.html", open_samples=open_samples, target=rt().config.sample.target_cells,
                           state=rt().loop.state(), model=rt().bundle, duplicates=duplicates, form=form or {})


@bp.route("/samples", methods=["POST"])
def new_sample():
    r = rt()
    code = form_text("sample_code", 64)
    if not code:
        flash(_("A sample id is required."), "error")
        return redirect(url_for("samples.index"))
    age = form_text("patient_age", 8)
    if not samples.patient_age_ok(age):
        flash(_("Age must be a whole number of years, from 0 to 120."), "error")
        return redirect(url_for("samples.index"))
    sex = samples.patient_sex(form_text("patient_sex", 16))
    duplicates = samples.find_by_code(r.store, code)
    if duplicates and request.form.get("confirm_duplicate") != "1":
        # a second sample with the same id is allowed only deliberately: show the form again with a warning
        return index(duplicates=duplicates, form=request.form), 409
    sid = samples.create_sample(r.store, code, g.user["username"], g.user["id"], form_text("patient_name", 120), age,
                                sex, form_text("note", 1000), r.config.sample.target_cells, r.bundle.name,
                                r.bundle.sha256)
    return redirect(url_for("samples.sample", sample_id=sid))


@bp.route("/samples/<int:sample_id>")
def sample(sample_id: int):
    """An open sample's capture page; a finished sample's result."""
    r = rt()
    s = sample_or_404(sample_id)
    fields = samples.fields_of(r.store, sample_id)
    summary = samples.summary_of(r.store, sample_id, r.config.sample.flags)
    used = samples.models_of(r.store, sample_id)
    if s["status"] == "finished":
        return _result_page(r, s, fields, summary, used)
    return _capture_page(r, s, fields, summary, used)


def _result_page(r, s, fields, summary, used):
    cells = samples.cells_of(r.store, s["id"])
    highlighted = samples.highlighted(cells)
    models_info = sample_models(r, s, used)
    return render_template("result.html", s=s, summary=summary, fields=fields, highlighted=highlighted[:48],
                           n_highlighted=len(highlighted), model=r.bundle, models_info=models_info,
                           screens=any(m["screens"] for m in models_info),
                           suspected=samples.possible_blasts(cells), result=json.loads(s["result_json"] or "{}"),
                           reviewers=samples.reviewers_of(r.store, s["id"]), models_used=used)


def _capture_page(r, s, fields, summary, used):
    last = fields[-1] if fields else None
    last_cells = samples.cells_of(r.store, s["id"], last["id"]) if last else []
    last_qc = json.loads(last["qc_json"] or "{}") if last else {}
    return render_template("capture.html", s=s, summary=summary, fields=fields, last=last, last_cells=last_cells,
                           last_scale=last_qc.get("scale") or None, repeat=repeats.held_repeat(fields, last),
                           held=len(samples.held_fields(r.store, s["id"])),
                           other_models=[m | {"label": f"{m['name']} {m['version']}".strip()} for m in used
                                         if m["sha256"] != r.bundle.sha256],
                           # the push-button's controls only where one is set up (or has been used)
                           has_button=(r.button is not None or bool(r.config.gpio.button_pin)
                                       or r.button_target is not None or bool(r.button_message)),
                           state=r.loop.state(), button_target=r.button_target, button_message=r.button_message)


@bp.route("/samples/<int:sample_id>/finish", methods=["GET", "POST"])
def finish(sample_id: int):
    """Finishing asks first: the page shows the unreviewed cells and whether the target was reached."""
    r = rt()
    s = sample_or_404(sample_id)
    if s["status"] != "open":
        return redirect(url_for("samples.sample", sample_id=sample_id))
    summary = samples.summary_of(r.store, sample_id, r.config.sample.flags)
    if request.method == "GET" or request.form.get("confirmed") != "1":
        return render_template("finish.html", s=s, summary=summary)
    try:
        samples.finish_sample(r.store, sample_id, g.user["username"], r.config.sample.flags,
                              verified_by=form_text("verified_by", 120))
    except samples.RecordError as exc:
        return error_page(409, _(str(exc)))
    r.sample_finished(sample_id)  # the push-button no longer captures into it
    return redirect(url_for("samples.sample", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/reopen", methods=["POST"])
@admin_required
def reopen(sample_id: int):
    sample_or_404(sample_id)
    try:
        samples.reopen_sample(rt().store, sample_id, g.user["username"], form_text("reason", 200))
    except samples.RecordError as exc:
        return error_page(409, _(str(exc)))
    flash(_("Sample re-opened for amendment. Finish it again when the changes are made."))
    return redirect(url_for("review.review", sample_id=sample_id))


@bp.route("/history")
def history():
    q = request.args.get("q", "")[:100]
    date_from = request.args.get("from", "")[:10]
    date_to = request.args.get("to", "")[:10]
    for d in (date_from, date_to):
        if d and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", d):
            return error_page(400, _("Dates are written YYYY-MM-DD."))
    flag = request.args.get("flag", "")
    flag = flag if flag in samples.SEARCH_FLAGS else ""
    rows = samples.search_samples(rt().store, q, date_from, date_to, flag)
    results = {r["id"]: json.loads(r["result_json"]) if r["result_json"] else None for r in rows}
    return render_template("history.html", rows=rows, results=results, q=q, date_from=date_from, date_to=date_to,
                           flag=flag)


@bp.route("/samples/<int:sample_id>/delete", methods=["POST"])
@admin_required
def delete(sample_id: int):
    sample_or_404(sample_id)
    samples.delete_sample(rt().store, sample_id, g.user["username"], form_text("reason", 200))
    flash(_("Sample deleted."))
    return redirect(url_for("samples.history"))
