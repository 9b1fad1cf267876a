"""The Settings page's site calibration: what the box has reviewed, fitting a calibration, the administrator's
accept / reject with before/after figures, roll-back; the qualified-reviewer mark on Users; and the words the
result page and the PDF use to name the calibration that classified a sample."""
from __future__ import annotations

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from device.calibration import CalibrationRefused, MIN_CELLS, MIN_SAMPLES, fit_calibration
from device.calibration.fit import Reference, usable
from device.records import calibrations as cals
from device.web.auth import admin_required

bp = Blueprint("calibration", __name__)


def rt():
    return current_app.extensions["leukoscope"]


def note(store, sample_id: int) -> list[str]:
    """One plain sentence per calibration that classified the sample's fields (none: the bundle alone)."""
    out = []
    for c in cals.calibrations_of(store, sample_id):
        if c["id"] is None:
            out.append(_("not calibrated on this box (the model's own thresholds): %(n)d field(s)", n=c["fields"]))
        else:
            out.append(_("calibrated on %(cells)d cells reviewed on this box, %(date)s (calibration %(id)d): %(n)d field(s)",
                         cells=c["cells"] or 0, date=c["date"], id=c["id"], n=c["fields"]))
    return out


def site_text(summary) -> str | None:
    """What the site-aware refer rule found, in words: what the fraction is a fraction of and what false calls explain."""
    site = summary.site
    if not site:
        return None
    return _("%(b)d blast call(s) in %(n)d decided white cells; false calls alone would explain about %(e)s "
             "(this box's measured rate %(rate)s %%, one-sided binomial test p = %(p)s).",
             b=site["blast_calls"], n=site["decided"], e="%.1f" % site["expected_false"],
             rate="%.1f" % (100 * site["false_call_rate"]), p="%.3g" % site["p_value"])


def _reference(bundle):
    r = bundle.reference
    return None if r is None else Reference(r["embeddings"], r["labels"], r["probabilities"])


@bp.route("/settings/calibration")
@admin_required
def page():
    r = rt()
    site = cals.reviewed_cells(r.store, r.bundle)
    keep = usable(site, r.bundle.categories) if len(site.y) else site.y.astype(bool)
    blast = [i for i, c in enumerate(r.bundle.categories) if c == "malignant"]
    status = {"cells": int(keep.sum()), "samples": len(set(site.sample[keep].tolist())),
              "qualified_blasts": int((site.qualified & (site.y[:, None] == blast).any(1)).sum()) if blast and len(site.y) else 0,
              "ignored_blasts": int((~keep).sum()), "min_cells": MIN_CELLS, "min_samples": MIN_SAMPLES,
              "reference": None if r.bundle.reference is None else len(r.bundle.reference["labels"])}
    active = cals.active_row(r.store, r.bundle.sha256)
    import json

    rows = [dict(row) | {"figures": json.loads(row["figures_json"])} for row in cals.listing(r.store)]
    return render_template("calibration.html", model=r.bundle, status=status, active=active, rows=rows,
                           in_use=r.classifier.calibration)


@bp.route("/settings/calibration/fit", methods=["POST"])
@admin_required
def fit():
    r, user = rt(), g.user["username"]
    try:
        cal = fit_calibration(r.bundle, _reference(r.bundle), cals.reviewed_cells(r.store, r.bundle))
    except CalibrationRefused as exc:
        cals.audit_refusal(r.store, user, str(exc), r.bundle)
        flash(_("Calibration refused: %(why)s", why=str(exc)), "error")
    else:
        cid = cals.propose(r.store, cal, r.bundle, user)
        flash(_("Calibration %(id)d fitted: compare its figures, then accept or reject it.", id=cid))
    return redirect(url_for("calibration.page"))


@bp.route("/settings/calibration/<int:cal_id>/decide", methods=["POST"])
@admin_required
def decide(cal_id: int):
    r = rt()
    decision = request.form.get("decision", "")
    if decision not in ("accept", "reject"):
        flash(_("Choose accept or reject."), "error")
        return redirect(url_for("calibration.page"))
    row = cals.get(r.store, cal_id)
    if row is None or row["bundle_sha256"] != r.bundle.sha256:
        flash(_("This calibration was fitted for another model."), "error")
        return redirect(url_for("calibration.page"))
    try:
        cals.decide(r.store, cal_id, decision == "accept", g.user["username"])
    except cals.CalibrationError as exc:
        flash(str(exc), "error")
    else:
        r.use_calibration()
        flash(_("Calibration %(id)d accepted: new captures use it.", id=cal_id) if decision == "accept"
              else _("Calibration %(id)d rejected.", id=cal_id))
    return redirect(url_for("calibration.page"))


@bp.route("/settings/calibration/rollback", methods=["POST"])
@admin_required
def rollback():
    r = rt()
    try:
        restored = cals.rollback(r.store, r.bundle.sha256, g.user["username"])
    except cals.CalibrationError as exc:
        flash(str(exc), "error")
    else:
        r.use_calibration()
        flash(_("Rolled back: calibration %(id)d is in use again.", id=restored) if restored
              else _("Rolled back: no calibration is in use."))
    return redirect(url_for("calibration.page"))


@bp.route("/users/<int:user_id>/qualified", methods=["POST"])
@admin_required
def qualified(user_id: int):
    try:
        cals.set_qualified(rt().store, user_id, request.form.get("state") == "on", g.user["username"])
    except cals.CalibrationError as exc:
        flash(str(exc), "error")
    return redirect(url_for("auth.users"))
