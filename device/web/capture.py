"""Capturing into an open sample: the Capture button, an uploaded field, a repeated view counted or discarded, the
push-button's target, and the status the capture page polls."""
from __future__ import annotations

import re

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _

from device.box.capture import CaptureError
from device.imageio import (ANALYSIS_MAX_PIXELS, MAX_FIELD_PIXELS, RETRY_AFTER_S, DecoderBusy, ImageError,
                            decode_image, upload_slot)
from device.records import repeats, samples
from device.web import words
from device.web.common import error_page, rt, sample_or_404, scale_text, wants_json

bp = Blueprint("capture", __name__)


@bp.route("/samples/<int:sample_id>/button", methods=["POST"])
def use_button(sample_id: int):
    """Make this open sample the push-button's target (an explicit choice, shown on every capture page)."""
    s = sample_or_404(sample_id)
    if s["status"] != "open":
        return error_page(409, "This sample is finished.")
    rt().choose_button_target(sample_id, s["sample_code"], g.user["username"])
    flash(f"The push-button now captures into {s['sample_code']}.")
    return redirect(url_for("samples.sample", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/capture", methods=["POST"])
def capture(sample_id: int):
    s = sample_or_404(sample_id)
    if s["status"] != "open":
        return error_page(409, _("This sample is finished."))
    try:
        result = rt().loop.capture(sample_id, g.user["username"])
    except CaptureError as exc:
        if wants_json():
            return error_page(503, str(exc))
        flash(str(exc), "error")
        return redirect(url_for("samples.sample", sample_id=sample_id))
    if wants_json():
        return jsonify(_capture_json(s, result))
    return redirect(url_for("samples.sample", sample_id=sample_id))


def _capture_json(s, result: dict) -> dict:
    """The capture's result with its wording rendered here, in the page's language."""
    r = rt()
    sid = s["id"]
    result["image_url"] = url_for("media.field_image", sample_id=sid, field_id=result["field_id"])
    summary = samples.summary_of(r.store, sid, r.config.sample.flags)
    fields = samples.fields_of(r.store, sid)
    result["count_html"] = render_template("_count.html", s=s, summary=summary, n_fields=len(fields),
                                           held=len(samples.held_fields(r.store, sid)))
    repeat = repeats.held_repeat(fields, next((f for f in fields if f["id"] == result["field_id"]), None))
    result["repeat"] = repeat
    result["qc_html"] = render_template("_qc.html", ok=result["qc_ok"], message=result["qc_message"],
                                        n=len(result["cells"]), repeat=repeat, s=s, uploaded=result.get("uploaded"))
    sc = result.get("scale")
    result["scale_text"] = scale_text(sc) if sc else ""
    return result


@bp.route("/samples/<int:sample_id>/upload", methods=["POST"])
def upload_field(sample_id: int):
    """A field photographed elsewhere (a phone on the eyepiece, a file): analysed like a capture."""
    s = sample_or_404(sample_id)
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
    if wants_json():
        return jsonify(_capture_json(s, result | {"uploaded": True}))
    return redirect(url_for("samples.sample", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/fields/<int:field_id>/repeat", methods=["POST"])
def repeated_field(sample_id: int, field_id: int):
    """A field held as a repeated view: count it after all (it is a new view) or discard it."""
    r = rt()
    sample_or_404(sample_id)
    try:
        if request.form.get("action") == "count":
            samples.count_repeated_field(r.store, sample_id, field_id, g.user["username"])
            flash(_("The field is counted as a new view."))
        else:
            samples.discard_repeated_field(r.store, sample_id, field_id, g.user["username"])
            flash(_("The repeated view was discarded; nothing of it was counted."))
    except samples.RecordError as exc:
        return error_page(409, _(str(exc)))
    return redirect(url_for("samples.sample", sample_id=sample_id))


@bp.route("/api/status")
def status():
    r = rt()
    state = r.loop.state()
    camera = state["camera"]
    return jsonify(camera=camera, camera_text=_(camera["status"]), busy=r.loop.busy, model=r.bundle.name,
                   model_problems=r.model_problems, captures=r.loop.captures, loop_error=state["error"],
                   button_sample=r.button_target[0] if r.button_target else None, button_message=r.button_message)
