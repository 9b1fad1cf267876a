"""Pictures: a stored field and a cell's crop, and the camera's live view (a stream, or a still frame)."""
from __future__ import annotations

import time

from flask import Blueprint, Response, abort, current_app, send_file
from flask_babel import gettext as _

from device.records import samples
from device.web.common import error_page, rt

bp = Blueprint("media", __name__)


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


RESEND_S = 5.0  # a live view with no new frame repeats its last one this often


@bp.route("/preview.mjpg")
def preview():
    loop = rt().loop
    boundary = "frame"
    streams = current_app.extensions["leukoscope_streams"]  # each live view holds a server thread
    if not streams.acquire(blocking=False):
        return preview_still()  # more viewers than allowed: a still frame; the page refreshes it

    def stream():
        last, sent, t_end = None, 0.0, time.monotonic() + 300  # bounded: the page reconnects
        while time.monotonic() < t_end:
            jpeg = loop.next_preview(last, wait=1.0)
            # a stalled camera sends nothing new: the last frame again every few seconds is what finds a viewer
            # who has gone (the write fails), instead of holding this server thread to the end
            if jpeg is None or (jpeg is last and time.monotonic() - sent < RESEND_S):
                continue
            last, sent = jpeg, time.monotonic()
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
