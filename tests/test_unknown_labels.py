"""Cells whose stored label the vocabulary no longer knows (classified by a bundle since removed, or reviewed
with a class since dropped) are shown under their stored name and counted as uncertain on every page, the
PDF and the exports: never a 500. Real SQLite records, the real app through Flask's test client."""
from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3

from pypdf import PdfReader

from testkit import REPO

GONE = "promonocyte-v0"  # a model label the vocabulary does not have
GONE_REVIEW = "hairy-cell-old"  # a reviewer's label from a vocabulary since changed


def _csrf(html: str) -> str:
    from testkit.web import csrf_of

    return csrf_of(html)


def test_unknown_stored_labels_show_as_stored_and_count_as_uncertain(tmp_path):
    from device.records import samples as records
    from device.box.runtime import build_runtime
    from device.config import AppConfig
    from device.imageio import read_image
    from device.web import create_app

    cfg = AppConfig()
    cfg.storage.data_dir = str(tmp_path / "data")
    shutil.copytree(REPO / "device/assets/fields", tmp_path / "fields")
    cfg.camera.folder = str(tmp_path / "fields")
    cfg.sample.target_cells = 2
    rt = build_runtime(cfg, start=False)
    try:
        app = create_app(rt)
        client = app.test_client()
        page = client.get("/setup")
        r = client.post("/setup", data={"csrf_token": _csrf(page.get_data(as_text=True)), "username": "admin",
                                        "password": "correct-horse-9", "confirm": "correct-horse-9"})
        assert r.status_code == 302, r.get_data(as_text=True)[:300]

        sid = records.create_sample(rt.store, "OLD-1", "admin", target=2)
        for name in sorted((tmp_path / "fields").iterdir())[:4]:
            img = read_image(name)
            records.save_field(rt.store, sid, img, rt.analyzer.analyze(img), "admin", model=rt.bundle)
        cells = records.cells_of(rt.store, sid)
        assert len(cells) >= 2
        # what a records file written under another vocabulary holds
        with sqlite3.connect(tmp_path / "data" / "leukoscope.db") as db:
            db.execute("UPDATE cells SET label = ?, flag = NULL, operator_label = NULL WHERE id = ?", (GONE, cells[0]["id"]))
            db.execute("UPDATE cells SET operator_label = ? WHERE id = ?", (GONE_REVIEW, cells[1]["id"]))

        summary = records.summary_of(rt.store, sid, cfg.sample.flags)
        assert summary.by_label[GONE] == 1 and summary.by_label[GONE_REVIEW] == 1
        flagged = sum(1 for c in records.cells_of(rt.store, sid) if c["flag"] and not c["operator_label"])
        assert summary.uncertain == 2 + flagged  # both unknowns counted as uncertain, never as leukocytes
        rows = {row["label"]: row for row in summary.rows()}
        assert rows[GONE]["category"] == "uncertain" and rows[GONE]["display"] == GONE

        for url in (f"/samples/{sid}", f"/samples/{sid}/review"):
            r = client.get(url)
            assert r.status_code == 200, (url, r.status_code)
            assert GONE in r.get_data(as_text=True), url

        records.finish_sample(rt.store, sid, "admin", cfg.sample.flags)
        result = client.get(f"/samples/{sid}")
        assert result.status_code == 200
        html = result.get_data(as_text=True)
        assert GONE in html and GONE_REVIEW in html and "not a diagnosis" in html.lower()
        assert client.get("/history").status_code == 200
        assert client.get(f"/history?text=OLD").status_code == 200

        pdf = client.get(f"/samples/{sid}/report.pdf")
        assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
        text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.data)).pages)
        assert GONE in text and GONE_REVIEW in text

        out = client.get(f"/samples/{sid}/cells.csv")
        assert out.status_code == 200
        by_id = {int(r["cell_id"]): r for r in csv.DictReader(io.StringIO(out.get_data(as_text=True)))}
        assert (by_id[cells[0]["id"]]["final_label"], by_id[cells[0]["id"]]["final_category"]) == (GONE, "uncertain")
        assert (by_id[cells[1]["id"]]["final_label"], by_id[cells[1]["id"]]["final_category"]) == (GONE_REVIEW,
                                                                                                   "uncertain")
        js = client.get(f"/samples/{sid}/cells.json")
        assert js.status_code == 200
        body = json.loads(js.data)
        assert GONE in json.dumps(body)
    finally:
        rt.stop()


def test_the_one_category_rule():
    from device.records.counts import category_of, final_label

    assert final_label("neutrophil", None, None) == ("neutrophil", "normal")
    assert final_label("neutrophil", "low-confidence", None) == ("uncertain", "uncertain")
    assert final_label("neutrophil", "low-confidence", "lymphoblast") == ("lymphoblast", "malignant")
    assert final_label(GONE, None, None) == (GONE, "uncertain")
    assert final_label("neutrophil", None, GONE_REVIEW) == (GONE_REVIEW, "uncertain")
    assert category_of("uncertain") == "uncertain" and category_of("platelet") == "non-leukocyte"
