"""The district on the box's page: the sample's send state and verdicts (result page), the district settings
with "Test the link" (Settings page), and the sender's PDF (rendered in the app, in the box's language). The
protocol, the outbox and the sender stay in ``device.district``, which never imports the page."""
from __future__ import annotations

from flask import Blueprint, current_app, flash, g, redirect, request, url_for
from flask_babel import gettext as _

from device.records import samples
from device import settings as st
from device.config import ConfigError
from device.district.link import Link, LinkError
from device.model import installed as models
from device.records import district as outbox
from device.web import words
from device.web.auth import admin_required
from device.web.report import sample_pdf

bp = Blueprint("district", __name__)


def _rt():
    return current_app.extensions["leukoscope"]


def state_text(row, sender_status: dict | None) -> tuple[str, str]:
    """(css class, sentence) of a sample's send state, for the result page."""
    if row is None:
        return "muted", _("Not queued for the district (finished before the district was set up).")
    if row["state"] == "sent":
        return "ok", _("Sent to the district at %(when)s.", when=words.local_time(row["sent_at"]))
    if sender_status is not None and not sender_status.get("configured"):
        return "muted", _("Queued for the district; no district is set up in Settings.")
    if row["state"] == "error":
        return "error", _("Not sent: %(why)s. The box tries again at %(when)s.", why=row["error"] or "-",
                          when=words.local_time(row["next_try_at"]))
    if row["attempts"]:
        return "warn", _("Waiting for a link to the district since %(when)s (%(why)s).",
                         when=words.local_time(row["queued_at"]), why=row["error"] or "-")
    return "warn", _("Queued for the district since %(when)s.", when=words.local_time(row["queued_at"]))


def install(app, runtime) -> None:
    """Register the routes and template helpers; give the sender a PDF maker bound to this app."""
    app.register_blueprint(bp)

    def make_pdf(sample_id: int) -> bytes:
        with app.test_request_context():
            s = samples.get_sample(runtime.store, sample_id)
            return sample_pdf(runtime.store, s, runtime.config, models.bundle_of_sample(
                runtime.config.data_dir, samples.models_of(runtime.store, sample_id), runtime.bundle))

    if getattr(runtime, "district", None) is not None:
        runtime.district.make_pdf = make_pdf

    @app.context_processor
    def district_helpers():
        def district_of(sample_id: int) -> dict:
            sender = getattr(runtime, "district", None)
            status = sender.status() if sender is not None else None
            row = outbox.state_of(runtime.store, sample_id)
            css, text = state_text(row, status)
            return {"css": css, "text": text, "verdicts": outbox.verdicts_of(runtime.store, sample_id)}

        # the identity is read (created once) only by the page that shows it
        return {"district_of": district_of, "district_config": lambda: runtime.config.district,
                "district_box_id": lambda: outbox.box_identity(runtime.store)}


@bp.route("/settings/district", methods=["POST"])
@admin_required
def save():
    r = _rt()
    form = request.form
    changes = {"url": form.get("url", "").strip(), "username": form.get("username", "").strip(),
               "ca_file": form.get("ca_file", "").strip(), "send_patient": form.get("send_patient") == "1"}
    if form.get("password"):  # blank keeps the stored password (never shown on the page)
        changes["password"] = form["password"]
    if changes["url"] and not changes["url"].startswith(("https://", "http://")):
        flash(_("The district URL must start with https:// (or http:// on a trusted network)."), "error")
        return redirect(url_for("admin.settings") + "#district")
    try:
        new = st.save_overrides(r.config, {"district": changes})
    except ConfigError as exc:
        flash(words.config_error(exc), "error")
        return redirect(url_for("admin.settings") + "#district")
    r.apply_config(new)
    r.store.audit(g.user["username"], "settings-changed",
                  detail={"district": {k: v for k, v in changes.items() if k != "password"}
                          | {"password": "changed" if "password" in changes else "kept"}})
    if getattr(r, "district", None) is not None:
        outbox.retry_now(r.store)
        r.district.wake()
    flash(_("District settings saved."))
    return redirect(url_for("admin.settings") + "#district")


@bp.route("/settings/district/test", methods=["POST"])
@admin_required
def test_link():
    r = _rt()
    d = r.config.district
    if not d.url:
        flash(_("Set the district URL first."), "error")
        return redirect(url_for("admin.settings") + "#district")
    try:
        Link.from_config(d).check()
    except LinkError as exc:
        r.store.audit(g.user["username"], "district-test", detail={"ok": False, "error": str(exc)})
        flash(_("The link to the district does not work: %(why)s", why=str(exc)), "error")
    else:
        r.store.audit(g.user["username"], "district-test", detail={"ok": True})
        flash(_("The link to the district works: the district answered and accepted this box's account."))
        if getattr(r, "district", None) is not None:
            outbox.retry_now(r.store)
            r.district.wake()
    return redirect(url_for("admin.settings") + "#district")
