"""Exports of a sample: a printable PDF report, and every cell as CSV or JSON."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime

from fpdf import FPDF

from device import labels as vocab
from device import records
from device.sample import DISCLAIMER

CELL_FIELDS = ("cell_id", "field_id", "x1", "y1", "x2", "y2", "model_label", "model_category", "probability", "flag",
               "operator_label", "final_label", "final_category", "reviewer", "reviewed_at")


def _cell_rows(store, s):
    for c in records.cells_of(store, s["id"]):
        if c["operator_label"]:
            final = c["operator_label"]
        elif c["flag"]:
            final = vocab.UNCERTAIN
        else:
            final = c["label"]
        cat = vocab.UNCERTAIN if final == vocab.UNCERTAIN else vocab.category_of(final)
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
                                     "status", "created_at", "finished_at", "model_name", "model_sha256")}
        | {"operator": s["operator"]},
        "summary": summary.to_dict(), "cells": list(_cell_rows(store, s)), "disclaimer": DISCLAIMER,
    }, indent=2)


class _Report(FPDF):
    def __init__(self, clinic: str):
        super().__init__(format="A4")
        self.clinic = clinic
        self.set_auto_page_break(True, margin=22)
        self.set_margins(15, 15, 15)

    def header(self):
        self.set_font("Helvetica", "B", 13)
        self.cell(0, 7, _latin(self.clinic), new_x="LMARGIN", new_y="NEXT")
        self.set_font("Helvetica", "", 9)
        self.cell(0, 5, "Leukoscope white-cell screening report", new_x="LMARGIN", new_y="NEXT")
        self.ln(2)

    def footer(self):
        self.set_y(-18)
        self.set_font("Helvetica", "I", 8)
        self.multi_cell(0, 4, _latin(DISCLAIMER) + f"   Page {self.page_no()}/{{nb}}")


def _latin(text) -> str:
    """The core PDF fonts carry Latin-1 only; other characters become '?' rather than failing."""
    return str(text).encode("latin-1", "replace").decode("latin-1")


def sample_pdf(store, s, cfg, bundle) -> bytes:
    summary = records.summary_of(store, s["id"], cfg.sample.flags)
    pdf = _Report(cfg.web.clinic_name)
    pdf.alias_nb_pages()
    pdf.add_page()

    def kv(key, value):
        pdf.set_font("Helvetica", "B", 10)
        pdf.cell(45, 6, _latin(key))
        pdf.set_font("Helvetica", "", 10)
        pdf.multi_cell(0, 6, _latin(value or "-"), new_x="LMARGIN", new_y="NEXT")

    kv("Sample id", s["sample_code"])
    kv("Patient", s["patient_name"])
    kv("Age / sex", f"{s['patient_age'] or '-'} / {s['patient_sex'] or '-'}")
    kv("Clinic note", s["note"])
    kv("Operator", s["operator"])
    kv("Started", s["created_at"])
    kv("Finished", s["finished_at"] or "not finished")
    kv("Printed", datetime.now().astimezone().isoformat(timespec="minutes"))
    pdf.ln(2)

    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Counts", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 10)
    total = max(summary.leukocytes, 1)
    with pdf.table(col_widths=(70, 35, 25, 25), text_align=("LEFT", "LEFT", "RIGHT", "RIGHT")) as table:
        table.row(("Cell type", "Category", "Count", "% of WBC"))
        for name, n in summary.by_label.items():
            cat = vocab.UNCERTAIN if name == vocab.UNCERTAIN else vocab.category_of(name)
            disp = "Uncertain (left for review)" if name == vocab.UNCERTAIN else vocab.label(name).display
            pct = f"{100 * n / total:.1f}" if cat in ("normal", "malignant", "atypical") else "-"
            table.row((_latin(disp), cat, str(n), pct))
    pdf.ln(2)
    lo, hi = summary.malignant_ci
    kv("White cells counted", f"{summary.leukocytes} of target {summary.target}")
    kv("Malignant fraction", f"{100 * summary.malignant_fraction:.1f} % (95 % Wilson interval "
                             f"{100 * lo:.1f}-{100 * hi:.1f} %), {summary.malignant} cells")
    kv("Uncertain cells", str(summary.uncertain))
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Flags", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 10)
    for f in summary.flags or [{"level": "-", "message": "No flag raised."}]:
        pdf.multi_cell(0, 6, _latin(f"[{f['level']}] {f['message']}"), new_x="LMARGIN", new_y="NEXT")

    flagged = [c for c in records.cells_of(store, s["id"])
               if (c["operator_label"] and c["operator_label"] != c["label"]) or c["flag"]
               or c["category"] in ("malignant", "atypical")][:24]
    if flagged:
        pdf.ln(2)
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(0, 7, "Flagged and reclassified cells", new_x="LMARGIN", new_y="NEXT")
        x0, y = pdf.l_margin, pdf.get_y()
        size = 28
        for i, c in enumerate(flagged):
            col = i % 6
            if col == 0 and i:
                y += size + 9
            if y + size + 9 > pdf.h - 25:
                pdf.add_page()
                y = pdf.get_y()
            x = x0 + col * (size + 2)
            try:
                pdf.image(str(store.path(c["crop_path"])), x=x, y=y, w=size, h=size)
            except (OSError, ValueError):
                pass
            pdf.set_xy(x, y + size)
            pdf.set_font("Helvetica", "", 6)
            model = c["label"] + (f" ({c['flag']})" if c["flag"] else "")
            text = model if not c["operator_label"] else f"{c['label']} -> {c['operator_label']}"
            pdf.multi_cell(size, 3, _latin(text))
        pdf.set_y(y + size + 10)

    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 7, "Model", new_x="LMARGIN", new_y="NEXT")
    meta = bundle.metadata
    used = records.models_of(store, s["id"])  # the models that classified it, not the one in use now
    for u in used:
        kv("Model", f"{u['name']} {u['version']}, checksum {u['sha256'][:16] or '-'}, {u['fields']} field(s)")
    if not used:
        kv("Model", "no field captured")
    m = meta.get("metrics", {}).get(meta["input"].get("quantization"), {})
    if m and any(u["sha256"] == bundle.sha256 for u in used):
        kv("Measured (test split)", f"balanced accuracy {m['balanced_accuracy']:.3f}, macro F1 {m['macro_f1']:.3f}, "
                                    f"{m['n']} images of {', '.join(d['name'] for d in meta.get('datasets', []))}")
    pdf.ln(3)
    pdf.set_font("Helvetica", "B", 10)
    pdf.multi_cell(0, 5, _latin(DISCLAIMER))
    return bytes(pdf.output())
