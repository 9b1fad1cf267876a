"""Exports of a sample: a printable PDF report, and every cell as CSV or JSON."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from fpdf import FPDF

from device import records
from device.records.sample import DISCLAIMER
from device.web import words

CELL_FIELDS = ("cell_id", "field_id", "x1", "y1", "x2", "y2", "model_label", "model_category", "probability", "flag",
               "operator_label", "final_label", "final_category", "reviewer", "reviewed_at")


def _cell_rows(store, s):
    for c in records.cells_of(store, s["id"]):
        final, cat = records.cell_final(c)
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
    summary = records.summary_of(store, s["id"], cfg.sample.flags)
    return json.dumps({
        "sample": {k: s[k] for k in ("id", "sample_code", "patient_name", "patient_age", "patient_sex", "note",
                                     "status", "created_at", "finished_at", "finished_by", "verified_by", "reopened_at",
                                     "reopened_by", "reopen_reason", "model_name", "model_sha256")}
        | {"operator": s["operator"]},
        "summary": summary.to_dict(), "cells": list(_cell_rows(store, s)), "disclaimer": DISCLAIMER,
    }, indent=2)


FONTS = Path(str(resources.files("device").joinpath("assets/fonts")))
GALLERY_MAX = 24


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


def sample_pdf(store, s, cfg, bundle) -> bytes:
    _ = words.gettext
    summary = records.summary_of(store, s["id"], cfg.sample.flags)
    pdf = _Report(cfg.web.clinic_name, rtl=words.lang() in words.RTL)
    pdf.alias_nb_pages()
    pdf.add_page()

    def kv(key, value, bold=False):
        pdf.set_font("noto", "B", 10)
        if pdf.rtl:
            pdf.multi_cell(0, 6, f"{key}: {value or '-'}", new_x="LMARGIN", new_y="NEXT", align="R")
            return
        pdf.cell(48, 6, key)
        pdf.set_font("noto", "B" if bold else "", 10)
        pdf.multi_cell(0, 6, str(value or "-"), new_x="LMARGIN", new_y="NEXT", align="L")

    sex_word = s["patient_sex"]
    sex = _(sex_word) if sex_word else "-"
    kv(_("Sample id"), s["sample_code"])
    kv(_("Patient"), s["patient_name"])
    kv(_("Age / sex"), f"{s['patient_age'] or '-'} / {sex}")
    kv(_("Clinic note"), s["note"])
    kv(_("Operator"), s["operator"])
    kv(_("Started"), words.local_time(s["created_at"], True))
    kv(_("Finished"), words.local_time(s["finished_at"], True) if s["finished_at"] else _("not finished"))
    if s["reopened_at"]:
        kv(_("Amended"), _("re-opened by %(who)s on %(when)s (%(why)s), finished again by %(by)s",
                           who=s["reopened_by"], when=words.local_time(s["reopened_at"]), why=s["reopen_reason"],
                           by=s["finished_by"] or "-"))
    kv(_("Printed"), words.local_time(datetime.now(timezone.utc).isoformat(), True))
    pdf.ln(2)

    pdf.heading(_("Result"))
    for f in summary.flags or [{"level": "-", "message": _("No flag raised.")}]:
        level = words.level_name(f["level"]) if f["level"] != "-" else "-"
        pdf.set_font("noto", "B", 10)
        pdf.multi_cell(0, 6, f"[{level}] {words.flag_text(f) if f['level'] != '-' else f['message']}",
                       new_x="LMARGIN", new_y="NEXT", align=pdf.align)
    pdf.set_font("noto", "", 10)
    kv(_("White cells counted"), _("%(n)d of target %(target)d", n=summary.leukocytes, target=summary.target)
       + ("" if summary.target_reached else " - " + _("insufficient")), bold=not summary.target_reached)
    if summary.leukocytes:
        lo, hi = summary.malignant_ci
        kv(_("Blast fraction"), _("%(p)s %% (95 %% Wilson interval %(lo)s-%(hi)s %%), %(cells)s",
                                  p=f"{100 * summary.malignant_fraction:.1f}", lo=f"{100 * lo:.1f}",
                                  hi=f"{100 * hi:.1f}", cells=words.cells(summary.malignant)))
    else:
        kv(_("Blast fraction"), _("not computable: no white cell counted"))
    for title, text, _from_card in words.model_limits(bundle):
        kv("   " + title, text)
    kv(_("Uncertain cells"), str(summary.uncertain) + (
        "  " + _("(finished with cells still uncertain: not counted)") if summary.uncertain else ""),
        bold=bool(summary.uncertain))
    kv(_("Not reviewed"), words.cells(summary.unreviewed))
    pdf.ln(1)

    pdf.heading(_("Counts"))
    total = max(summary.leukocytes, 1)
    with pdf.table(col_widths=(70, 40, 25, 25), text_align=("LEFT", "LEFT", "RIGHT", "RIGHT")) as table:
        table.row((_("Cell type"), _("Category"), _("Count"), _("WBC share")))
        for row in summary.rows():
            cat = row["category"]
            pct = f"{100 * row['count'] / total:.1f}" if cat in ("normal", "malignant", "atypical") else "-"
            table.row((words.display(row["label"]), words.category_name(cat), str(row["count"]), pct))
    pdf.ln(2)

    cells = records.cells_of(store, s["id"])
    ordered = records.report_order(cells)
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
            pdf.set_xy(x, y + size)
            pdf.set_font("noto", "", 6)
            final, _cat = records.cell_final(c)
            text = words.display(final)
            if records.cell_reclassified(c):
                text += "\n" + _("model: %(label)s", label=words.display(c["label"]))
            pdf.multi_cell(size, 3, text, align=pdf.align)
        pdf.set_y(y + size + 11)

    pdf.ln(2)
    pdf.heading(_("Model"))
    used = records.models_of(store, s["id"])  # the models that classified it, not the one in use now
    for u in used:
        kv(_("Model"), _("%(name)s %(version)s, checksum %(sha)s: %(fields)s", name=u["name"], version=u["version"],
                         sha=u["sha256"][:16] or "-", fields=words.ngettext("%(num)d field", "%(num)d fields",
                                                                              u["fields"])))
    if not used:
        kv(_("Model"), _("no field captured"))
    pdf.ln(2)
    pdf.heading(_("Sign-off"))
    kv(_("Reviewed by"), ", ".join(records.reviewers_of(store, s["id"])) or "-")
    kv(_("Verified by"), (s["verified_by"] or "") + "   " + _("Signature:") + " ____________________")
    from device.records import district  # issue 25: the district experts' verdicts on this sample

    for v in district.verdicts_of(store, s["id"]):
        text = _("Reviewed at the district by %(who)s (%(role)s) on %(when)s: %(verdict)s", who=v["expert"],
                 role=v["role"], when=words.local_time(v["signed_at"]), verdict=v["verdict"])
        if v["blasts_confirmed"]:
            text += " · " + words.ngettext("%(num)d blast confirmed", "%(num)d blasts confirmed", v["blasts_confirmed"])
        kv(_("District review"), text + (f" · {v['note']}" if v["note"] else ""))
    pdf.ln(3)
    pdf.set_font("noto", "B", 10)
    pdf.multi_cell(0, 5, words.disclaimer(), align=pdf.align)
    return bytes(pdf.output())
