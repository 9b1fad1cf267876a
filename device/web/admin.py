"""The administrator's pages: the audit log, Settings (the form, the measured pixel size, the model in use)."""
from __future__ import annotations

from flask import Blueprint, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext as _

from device import settings as st
from device.config import LANGUAGES, ConfigError
from device.model import installed as models
from device.model.bundle import BundleError
from device.records import samples
from device.web import words
from device.web.auth import admin_required
from device.web import settings_form as form_
from device.web.common import error_page, rt

bp = Blueprint("admin", __name__)
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


@bp.route("/settings", methods=["GET", "POST"])
@admin_required
def settings():
    r = rt()
    error = None
    if request.method == "POST":
        try:
            changes = form_.parse_form(request.form, r.config)
            new = st.save_overrides(r.config, changes)
        except ConfigError as exc:
            error = words.config_error(exc)
        else:
            if new == r.config:
                flash(_("Nothing changed: the settings are as they were."))
                return redirect(url_for("admin.settings"))
            applied = r.apply_config(new)
            r.store.audit(g.user["username"], "settings-changed", detail=changes)
            flash(_("Settings saved: %(what)s.", what=", ".join(_(a) for a in applied)))
            return redirect(url_for("admin.settings"))
    values = form_.form_values(r.config, request.form if error else None)
    return render_template("settings.html", fields=form_.EDITABLE, values=values,
                           flags_toml=request.form.get("flags_toml") if error else form_.flags_toml(r.config),
                           model=r.bundle,
                           problems=r.model_problems + ([r.store.reserve_problem] if r.store.reserve_problem else []),
                           error=error, shipped=_shipped(r),
                           measured=samples.last_camera_scale(r.store), language_names=LANGUAGES,
                           last_backup=samples.last_backup(r.store)), \
        400 if error else 200


def _shipped(r) -> list[dict]:
    return [{"stem": stem, "name": b.name, "version": b.meta.version, "task": b.meta.task,
             "in_use": b.sha256 == r.bundle.sha256, "has_blasts": "malignant" in b.categories}
            for stem, b in models.builtin(r.config.data_dir)]


@bp.route("/settings/scale", methods=["POST"])
@admin_required
def keep_scale():
    """Keep the scale last measured from the red cells as the configured pixel size (the value used
    for fields with too few red cells)."""
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
    return redirect(url_for("admin.settings"))


@bp.route("/settings/model/builtin", methods=["POST"])
@admin_required
def use_builtin_model():
    r = rt()
    stem = request.form.get("builtin", "")
    try:
        bundle = models.install_builtin(stem, r.config.data_dir, r.config.model.threads)
    except BundleError as exc:
        return error_page(400, _("Model refused, the current model stays in use: %(why)s", why=str(exc)))
    r.store.audit(g.user["username"], "model-installed", detail={"name": bundle.name, "sha256": bundle.sha256,
                                                                  "shipped": stem})
    flash(_(MODEL_SWITCHED, name=bundle.name))
    return redirect(url_for("admin.settings"))


MODEL_SWITCHED = ("Model %(name)s installed: it classifies every field captured from now on (within a few seconds, "
                  "no restart). Fields already captured keep the model that classified them; a sample classified "
                  "by two models shows the limits of both.")


@bp.route("/settings/model", methods=["POST"])
@admin_required
def upload_model():
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
    return redirect(url_for("admin.settings"))
