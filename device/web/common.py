"""What every page of the box shares: the runtime, whether a request wants JSON, the error page, form text, the
sample a URL names, and the limits of the models that classified a sample."""
from __future__ import annotations

from flask import Response, abort, current_app, jsonify, render_template, request
from flask_babel import gettext as _

from device.model import installed as models
from device.records import samples
from device.web import words

MAX_TEXT = 500


def rt():
    return current_app.extensions["leukoscope"]


def wants_json() -> bool:
    """The one rule: a request asking for JSON first, sending JSON, or under /api/ gets JSON back (a result or an
    error); any other gets a page."""
    return request.accept_mimetypes.best == "application/json" or request.path.startswith("/api/") or request.is_json


def error_page(code: int, message: str):
    if wants_json():
        return jsonify(error=message), code
    return render_template("error.html", code=code, message=message), code


def health():
    ok, body = rt().health()
    return jsonify(body), 200 if ok else 503


def form_text(name: str, limit: int = MAX_TEXT) -> str:
    value = request.form.get(name, "")
    if len(value) > limit:
        abort(Response(render_template("error.html", code=400,
                                       message=_("'%(name)s' is longer than %(n)d characters.", name=name, n=limit)),
                       400))
    return value.strip()


def sample_or_404(sample_id: int):
    try:
        return samples.get_sample(rt().store, sample_id)
    except samples.RecordError:
        abort(404)


def scale_text(sc: dict) -> str:
    return "· " + _("%(um)s um per pixel (%(how)s)", um="%.3f" % sc["um_per_px"], how=_(sc["source"]))


def sample_models(r, s, used: list[dict]) -> list[dict]:
    """Each model that classified the sample (else the one in use), with its limits: a sample classified by two
    models shows both, never only the one in use now."""
    out = []
    for u in used or [None]:
        bundle = models.bundle_of_sample(r.config.data_dir, [u] if u else [], r.bundle)
        out.append({"used": u, "bundle": bundle, "limits": words.model_limits(bundle),
                    "lead": words.limits_lead(bundle), "warnings": words.sample_warnings(bundle, s),
                    "screens": words.has_blasts(bundle) if bundle is not None else True})
    return out
