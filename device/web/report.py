"""Exports of a sample: a printable PDF report, and every cell as CSV or JSON."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from fpdf import FPDF

from device.records import samples
from device.records.counts import DISCLAIMER
from device.web import words

CELL_FIELDS = ("cell_id", "field_id", "x1", "y1", "x2", "y2", "model_label", "model_category", "probability", "flag",
               "operator_label", "final_label", "final_category", "reviewer", "reviewed_at")


def _cell_rows(store, s):
    for c in samples.cells_of(store, s["id"]):
        final, cat = samples.cell_final(c)
        yield {"cell_id": c["id"], "field_id": c["field_id"], "x1": c["x1"], "y1": c["y1"], "x2": c["x2"], "y2": c["y2"],
               "model_label": c["label"], "model_category": c["category"], "probability": round(c["probability"], 4),
               "flag": c["flag"] or "", "operator_label": c["operator_label"] or "", "final_label": final,
               "final_category": cat, "reviewer": c["reviewer"] or "", "reviewed_at": c["reviewed_at"] or "",
               "probabilities": json.loads(c["probabilities_json"])}


def _safe_cell(value):
    # a spreadsheet must not run a cell that starts like a formula
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def cells_csv(store, s) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(("sample_code",) + CELL_FIELDS)
    for row in _cell_rows(store, s):
        w.writerow([_safe_cell(s["sample_code"])] + [_safe_cell(row[k]) for k in CELL_FIELDS])
    return out.getvalue()


def cells_json(store, s, cfg) -> str:
    summary = samples.summary_of(store, s["id"], cfg.sample.flags)
    return json.dumps({
        "sample": {k: s[k] for k in ("id", "sample_code", "patient_name", "patient_age", "patient_sex", "note",
                                     "status", "created_at", "finished_at", "finished_by", "verified_by", "reopened_at",
                                     "reopened_by", "reopen_reason", "model_name", "model_sha256")}
        | {"operator": s["operator"]},
        "summary": summary.to_dict(), "cells": list(_cell_rows(store, s)), "disclaimer": DISCLAIMER,
    }, indent=2)


FONTS = Path(str(resources.files("device").joinpath("assets/fonts")))
GALLERY_MAX = 24


KEY_W = 48  # mm: the key column of the report's key/value lines


class _Report(FPDF):
    """A4 report in Noto Sans (Latin), with Noto Sans Arabic and Bengali as fallbacks; text shaping (HarfBuzz)
    joins Arabic letters and orders right-to-left runs."""

    def __init__(self, clinic: str, rtl: bool = False):
        super().__init__(format="A4")
        self.clinic = clinic
        self.rtl = rtl
        for family, stem in (("noto", "NotoSans"), ("noto-arabic", "NotoSansArabic"), ("noto-bengali", "NotoSansBengali")):
            self.add_font(family, "", FONTS / f"{stem}-Regular.ttf")
            self.add_font(family, "B", FONTS / f"{stem}-Bold.ttf")
        self.set_fallback_fonts(["noto-arabic", "noto-bengali"])
        self.set_text_shaping(True)
        self.set_auto_page_break(True, margin=22)
        self.set_margins(15, 15, 15)
        self.align = "R" if rtl else "L"

    def header(self):
        self.set_font("noto", "B", 13)
        self.cell(0, 7, self.clinic, new_x="LMARGIN", new_y="NEXT", align=self.align)
        self.set_font("noto", "", 9)
        self.cell(0, 5, words.gettext("Leukoscope white-cell screening report"), new_x="LMARGIN", new_y="NEXT",
                  align=self.align)
        self.ln(2)

    def footer(self):
        self.set_y(-19)
        self.set_font("noto", "", 8)
        self.multi_cell(0, 4, words.disclaimer(), align=self.align, new_x="LMARGIN", new_y="NEXT")
        self.cell(0, 4, words.gettext("Page %(n)d of %(total)s", n=self.page_no(), total="{nb}"),
                  align="L" if self.rtl else "R")

    def heading(self, text: str):
        self.set_font("noto", "B", 11)
        self.cell(0, 7, text, new_x="LMARGIN", new_y="NEXT", align=self.align)
        self.set_font("noto", "", 10)

    def para(self, text, style="", size=10, h=5.5):
        """A paragraph in its own direction: Arabic right to left, Latin text (card figures) left to right."""
        self.set_font("noto", style, size)
        ltr = _latin(text)
        if self.rtl:
            self.set_text_shaping(True, direction="ltr" if ltr else "rtl")
        self.multi_cell(0, h, str(text), new_x="LMARGIN", new_y="NEXT", align="R" if self.rtl else "L")
        if self.rtl:
            self.set_text_shaping(True)

    def kv(self, key, value, bold=False):
        value = str(value or "-")
        self.set_font("noto", "B", 10)
        if self.rtl or self.get_string_width(key) > KEY_W - 2:
            # a long key (or a right-to-left page) gets its own line: never printed over its value
            self.para(key, "B")
            if self.rtl:
                self.para(value, "B" if bold else "")
            else:
                self.set_x(self.l_margin + KEY_W)
                self.set_font("noto", "B" if bold else "", 10)
                self.multi_cell(0, 6, value, new_x="LMARGIN", new_y="NEXT", align="L")
            return
        self.cell(KEY_W, 6, key)
        self.set_font("noto", "B" if bold else "", 10)
        self.multi_cell(0, 6, value, new_x="LMARGIN", new_y="NEXT", align="L")


def _latin(text: str) -> bool:
    """Text written in a left-to-right script (a model card's English, an id): laid out left to right even on an
    Arabic page, so the bidi algorithm does not scramble it."""
    return not any("\u0590" <= ch <= "\u08ff" for ch in str(text))


def _wrap(pdf, text: str, width: float) -> list[str]:
    """Whole words per line, each line narrower than ``width`` (mm) in the current font."""
    lines: list[str] = []
    for para in str(text).split("\n"):
        line = ""
        for word in para.split():
            trial = f"{line} {word}".strip()
            if line and pdf.get_string_width(trial) > width - 1:
                lines.append(line)
                line = word
            else:
                line = trial
        lines.append(line)
    return lines


_ = words.gettext


def sample_pdf(store, s, cfg, bundle, models_info=None) -> bytes:
    """``models_info``: each model that classified the sample with its limits (``web.common.sample_models``);
    by default the one ``bundle``."""
    summary = samples.summary_of(store, s["id"], cfg.sample.flags)
    pdf = _Report(cfg.web.clinic_name, rtl=words.lang() in words.RTL)
    pdf.alias_nb_pages()
    pdf.add_page()
    if models_info is None:
        models_info = [{"used": None, "bundle": bundle, "limits": words.model_limits(bundle),
                        "lead": words.limits_lead(bundle), "warnings": words.sample_warnings(bundle, s),
                        "screens": words.has_blasts(bundle) if bundle is not None else True}]
    screens = any(m["screens"] for m in models_info)
    if not screens:  # said first: this report has no blast fraction
        _lead_first(pdf, models_info[0])
    _sample_lines(pdf, s)
    cells = samples.cells_of(store, s["id"])
    _result(pdf, cells, summary, screens)
    _counts(pdf, summary)
    _gallery(pdf, store, cells)
    _models(pdf, store, s, summary, models_info)
    _sign_off(pdf, store, s)
    # the disclaimer is in every page's footer: no page of its own for it
    return bytes(pdf.output())


def _lead_first(pdf, model) -> None:
    """A report with no blast fraction says so before anything else."""
    pdf.set_text_color(160, 20, 20)
    for line in model["lead"]:
        pdf.para(line, "B", 11, 6)
    pdf.set_text_color(0, 0, 0)
    pdf.ln(1)


def _sample_lines(pdf, s) -> None:
    """Who, what and when."""
    sex_word = s["patient_sex"]
    sex = _(sex_word) if sex_word else "-"
    age = _("%(age)s years", age=s["patient_age"]) if s["patient_age"] else "-"
    pdf.kv(_("Sample id"), s["sample_code"])
    pdf.kv(_("Patient"), s["patient_name"])
    pdf.kv(_("Age / sex"), f"{age} / {sex}")
    pdf.kv(_("Clinic note"), s["note"])
    pdf.kv(_("Operator"), s["operator"])
    pdf.kv(_("Started"), words.local_time(s["created_at"], True))
    pdf.kv(_("Finished"), words.local_time(s["finished_at"], True) if s["finished_at"] else _("not finished"))
    if s["reopened_at"]:
        when = words.local_time(s["reopened_at"])
        pdf.kv(_("Amended"), _("re-opened by %(who)s on %(when)s (%(why)s), finished again by %(by)s",
                           who=s["reopened_by"], when=f"\u2066{when}\u2069" if pdf.rtl else when,
                           why=s["reopen_reason"],
                           by=s["finished_by"] or "-"))
    pdf.kv(_("Printed"), words.local_time(datetime.now(timezone.utc).isoformat(), True))
    pdf.ln(2)


def _result(pdf, cells, summary, screens: bool) -> None:
    """The flags, the count, the blast fraction and what is still undecided."""
    pdf.heading(_("Result"))
    for f in summary.flags or [{"level": "-", "message": _("No flag raised.")}]:
        if f["level"] == "-":
            pdf.para(f["message"], "B", 10, 6)
            continue
        level = words.level_name(f["level"])
        pdf.para(f"{level[:1].upper()}{level[1:]}: {words.flag_text(f)}", "B", 10, 6)
    pdf.set_font("noto", "", 10)
    pdf.kv(_("White cells counted"), _("%(n)d of target %(target)d", n=summary.leukocytes, target=summary.target)
       + ("" if summary.target_reached else " - " + _("insufficient")), bold=not summary.target_reached)
    if not screens:
        if summary.malignant:
            pdf.kv(_("Blasts"), _("Cells a reviewer classified as blasts: %(n)d (this model does not look for them).",
                              n=summary.malignant))
    elif summary.leukocytes:
        lo, hi = summary.malignant_ci
        # an interval reads low to high in every language: on a right-to-left page the range is its own
        # left-to-right run ("1.0 - 8.1"), never reordered into "8.1-1.0"
        rng = f"{100 * lo:.1f}-{100 * hi:.1f}"
        if pdf.rtl:
            rng = f"\u2066{rng}\u2069"
        pdf.kv(_("Blast fraction"), _("%(p)s %% (95 %% Wilson interval %(range)s %%), %(cells)s",
                                  p=f"{100 * summary.malignant_fraction:.1f}", range=rng,
                                  cells=words.cells(summary.malignant)))
    else:
        pdf.kv(_("Blast fraction"), _("not computable: no white cell counted"))
    suspected = [c for c in cells if c["flag"] == samples.POSSIBLE_BLAST]
    if suspected:
        from collections import Counter

        decided = Counter(words.display(c["operator_label"]) for c in suspected if c["operator_label"])
        text = words.ngettext("%(num)d cell suspected by the model", "%(num)d cells suspected by the model",
                              len(suspected))
        sep = "؛ " if pdf.rtl else "; "  # the Arabic semicolon on a right-to-left page
        if decided:
            text += sep + _("Decided by a reviewer:") + " " + ", ".join(f"{k} {v}" for k, v in decided.most_common())
        undecided = sum(1 for c in suspected if not c["operator_label"])
        if undecided:
            text += sep + _("Not decided: %(n)d (not counted).", n=undecided)
        pdf.kv(_("Possible blasts"), text, bold=True)
    if summary.undecided:
        pdf.kv(_("Undecided cells"), _("%(u)d cell(s) not yet decided: if they were decided, the fraction would lie between "
                                   "%(lo)s %% and %(hi)s %%.", u=summary.undecided,
                                   lo=f"{100 * summary.malignant_range[0]:.1f}", hi=f"{100 * summary.malignant_range[1]:.1f}"))
    pdf.kv(_("Uncertain cells"), str(summary.uncertain) + (
        "  " + _("(finished with cells still uncertain: not counted)") if summary.uncertain else ""),
        bold=bool(summary.uncertain))
    pdf.kv(_("Not reviewed"), words.cells(summary.unreviewed))
    pdf.ln(1)


def _counts(pdf, summary) -> None:
    """Each cell type with its share of the white cells."""
    pdf.heading(_("Counts"))
    total = max(summary.leukocytes, 1)
    side = "RIGHT" if pdf.rtl else "LEFT"
    with pdf.table(col_widths=(70, 40, 25, 25), text_align=(side, side, "RIGHT", "RIGHT")) as table:
        table.row((_("Cell type"), _("Category"), _("Count"), _("WBC share")))
        for row in summary.rows():
            cat = row["category"]
            pct = f"{100 * row['count'] / total:.1f}" if cat in ("normal", "malignant", "atypical") else "-"
            table.row((words.display(row["label"]), words.category_name(cat), str(row["count"]), pct))
    pdf.ln(2)


def _gallery(pdf, store, cells) -> None:
    """The cells, blasts first, each with its final label (and the model's, when reclassified)."""
    ordered = samples.report_order(cells)
    shown = ordered[:GALLERY_MAX]
    if shown:
        if pdf.get_y() + 7 + 28 + 10 > pdf.h - 25:
            pdf.add_page()  # never a heading alone at the foot of a page
        pdf.heading(_("Cells: blasts, reclassified, uncertain, then the rest") + "  ("
                    + _("%(shown)d of %(total)d cells shown", shown=len(shown), total=len(cells)) + ")")
        x0, y = pdf.l_margin, pdf.get_y()
        size = 28
        for i, c in enumerate(shown):
            col = i % 6
            if col == 0 and i:
                y += size + 10
            if y + size + 10 > pdf.h - 25:
                pdf.add_page()
                y = pdf.get_y()
            x = x0 + col * (size + 2)
            try:
                pdf.image(str(store.path(c["crop_path"])), x=x, y=y, w=size, h=size)
            except (OSError, ValueError):
                pass
            pdf.set_font("noto", "", 6)
            final, _cat = samples.cell_final(c)
            text = words.display(final)
            if c["flag"] == samples.POSSIBLE_BLAST:
                text = _("Possible blast") + ": " + text
            lines = _wrap(pdf, text, size)
            if samples.cell_reclassified(c):
                lines += _wrap(pdf, _("model: %(label)s", label=words.display(c["label"])), size)
            for k, line in enumerate(lines[:3]):
                # one shaped line per cell: fpdf2's own wrapping of a right-to-left caption splits words and
                # garbles the shaping (issue 21)
                pdf.set_xy(x, y + size + 3 * k)
                # an Arabic caption in the Arabic font itself: drawn through the fallback font at this size,
                # fpdf2 2.8 put another subset's glyph in place of a letter ("المراجعة" with a "4" inside)
                pdf.set_font("noto" if _latin(line) else "noto-arabic", "", 6)
                if pdf.rtl:
                    pdf.set_text_shaping(True, direction="ltr" if _latin(line) else "rtl")
                pdf.cell(size, 3, line, align=pdf.align)
            if pdf.rtl:
                pdf.set_text_shaping(True)
        pdf.set_y(y + size + 11)


def _models(pdf, store, s, summary, models_info) -> None:
    """The models that classified the sample, each with what it can and cannot tell; the site calibration."""
    pdf.ln(2)
    pdf.heading(_("Model"))
    # the models that classified it, not the one in use now: each with what it can and cannot tell
    for m in models_info:
        u = m["used"]
        if u:
            pdf.kv(_("Model"), _("%(name)s %(version)s, checksum %(sha)s: %(fields)s", name=u["name"],
                             version=u["version"], sha=u["sha256"][:16] or "-",
                             fields=words.ngettext("%(num)d field", "%(num)d fields", u["fields"])))
        else:
            pdf.kv(_("Model"), _("no field captured"))
        for line in m["lead"]:
            pdf.para(line, "", 9.5, 5)
        pdf.set_text_color(160, 20, 20)
        for w in m["warnings"]:
            pdf.para(w, "B", 9.5, 5)
        pdf.set_text_color(0, 0, 0)
        for title, text, _from_card in m["limits"]:
            if pdf.get_y() + 14 > pdf.h - 22:
                pdf.add_page()  # never a title alone at the foot of a page
            pdf.para(title, "B", 8.5, 4.5)
            pdf.para(text, "", 8.5, 4.2)
        pdf.ln(1)
    from device.web.calibration import note, site_text

    for line in note(store, s["id"]):
        pdf.kv(_("Site calibration"), line)
    summary_site = site_text(summary)
    if summary_site:
        pdf.kv(_("Refer rule"), summary_site)
    pdf.ln(2)


def _sign_off(pdf, store, s) -> None:
    """Reviewers, the verifier's signature and the district's verdicts."""
    pdf.heading(_("Sign-off"))
    pdf.kv(_("Reviewed by"), ", ".join(samples.reviewers_of(store, s["id"])) or "-")
    pdf.kv(_("Verified by"), (s["verified_by"] or "") + "   " + _("Signature:") + " ____________________")
    from device.records import district  # issue 25: the district experts' verdicts on this sample

    for v in district.verdicts_of(store, s["id"]):
        text = _("Reviewed at the district by %(who)s (%(role)s) on %(when)s: %(verdict)s", who=v["expert"],
                 role=v["role"], when=words.local_time(v["signed_at"]), verdict=v["verdict"])
        if v["blasts_confirmed"]:
            text += " · " + words.ngettext("%(num)d blast confirmed", "%(num)d blasts confirmed", v["blasts_confirmed"])
        pdf.kv(_("District review"), text + (f" · {v['note']}" if v["note"] else ""))
