"""Reviewing a sample's cells: the review pages, one cell decided, a confident class or every normal cell above
a probability accepted at once."""
from __future__ import annotations

from flask import Blueprint, abort, flash, g, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _

from device.records import samples
from device.web import words
from device.web.common import error_page, rt, sample_or_404, wants_json

bp = Blueprint("review", __name__)
REVIEW_PAGE = 24  # cells per review page: a page the 800x480 screen can scroll in a few swipes


def _pages(groups: list[dict], page: int) -> tuple[int, int, list[dict], dict]:
    """(page, pages, the groups of this page with their cells, the page each group starts on)."""
    flat = [(g, c) for g in groups for c in g["cells"]]
    pages = max(1, -(-len(flat) // REVIEW_PAGE))
    page = min(max(1, page), pages)
    page_groups: list[dict] = []
    for g, c in flat[(page - 1) * REVIEW_PAGE: page * REVIEW_PAGE]:
        if not page_groups or page_groups[-1]["group"] is not g:
            page_groups.append({"group": g, "cells": []})
        page_groups[-1]["cells"].append(c)
    starts, i = {}, 0
    for g in groups:  # the page each group starts on, for the index
        starts[g["label"]] = i // REVIEW_PAGE + 1
        i += len(g["cells"])
    return page, pages, page_groups, starts


@bp.route("/samples/<int:sample_id>/review")
def review(sample_id: int):
    r = rt()
    s = sample_or_404(sample_id)
    cells = samples.cells_of(r.store, sample_id)
    groups = samples.review_groups(cells)
    page, pages, page_groups, starts = _pages(groups, request.args.get("page", 1, type=int))
    labels = samples.review_labels(r.bundle.labels, words.display)
    keyed = [n for n in labels if n in r.bundle.labels][:9]  # keys 1-9: the model's own classes
    summary = samples.summary_of(r.store, sample_id, r.config.sample.flags)
    return render_template("review.html", s=s, groups=groups, page_groups=page_groups, page=page, pages=pages,
                           starts=starts, labels=labels, keyed=keyed,
                           quick=lambda c: samples.quick_labels(c, labels),
                           left=sum(c["operator_label"] is None for c in cells), summary=summary,
                           screens=words.has_blasts(r.bundle))


def _refused(exc: Exception) -> str:
    """The operator's words for a refused decision (a label outside the vocabulary raises KeyError)."""
    return _("Unknown label.") if isinstance(exc, KeyError) else _(str(exc).strip('"'))


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
    if not label:
        return error_page(400, _("Choose the cell type first."))
    try:
        samples.review_cell(r.store, cell_id, label, g.user["username"], g.user["id"], confirm=confirm)
    except (samples.RecordError, KeyError) as exc:
        return error_page(400, _refused(exc))
    if wants_json():
        summary = samples.summary_of(r.store, row["sample_id"], r.config.sample.flags)
        s = samples.get_sample(r.store, row["sample_id"])
        return jsonify(ok=True, summary=summary.to_dict(), label=label, display=words.display(label),
                       category=samples.category_of(label),
                       live_html=render_template("_live.html", summary=summary, s=s))
    page = request.form.get("page", type=int) or 1
    return redirect(url_for("review.review", sample_id=row["sample_id"], page=page) + f"#cell-{cell_id}")


@bp.route("/samples/<int:sample_id>/accept", methods=["POST"])
def accept_class(sample_id: int):
    """Confirm every unreviewed cell the model confidently called one class."""
    r = rt()
    sample_or_404(sample_id)
    label = request.form.get("label", "")
    try:
        n = samples.accept_class(r.store, sample_id, label, g.user["username"], g.user["id"])
    except (samples.RecordError, KeyError) as exc:
        return error_page(400, _refused(exc))
    flash(_("%(cells)s accepted as %(label)s.", cells=words.cells(n), label=words.display(label)))
    return redirect(url_for("review.review", sample_id=sample_id))


@bp.route("/samples/<int:sample_id>/accept-above", methods=["POST"])
def accept_above(sample_id: int):
    """The reviewer's explicit choice: accept the model's guess for every normal cell called with at least P %."""
    r = rt()
    sample_or_404(sample_id)
    p = request.form.get("min_percent", type=float)
    if p is None:
        return error_page(400, _("Give the lowest model probability to accept, in per cent."))
    try:
        n = samples.accept_confident(r.store, sample_id, p / 100.0, g.user["username"], g.user["id"])
    except samples.RecordError as exc:
        return error_page(400, _(str(exc)))
    flash(_("%(cells)s of normal classes accepted as the model called them (model %(p)s %% or more).",
            cells=words.cells(n), p="%g" % p))
    return redirect(url_for("review.review", sample_id=sample_id))
