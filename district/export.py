"""Every expert-confirmed cell of the district as a training set: a crop at the device's framing (a square of
28 um around the cell, as the box crops it for the classifier), its label, its box, its patient (the box's
pseudonym), the pixel size, the model that saw it and the verdict. ``leukoscope train`` reads it with
``training.datasets.read_district``: split by patient, and each box is its own source (a whole box can be
held out, as the cross-lab protocol holds out a lab).

    OUT/manifest.csv
    OUT/<box>/<label>/<study>-<cell>.jpg
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from district.catalogue import Catalogue

CROP_UM = 28.0  # the box's crop side (device/analysis/preprocess.py: a square of 28 um)
FIELDS = ("path", "label", "box", "patient", "study", "cell", "um_per_px", "model", "model_sha256", "box_label",
          "verdict", "expert", "signed_at")


def crop_at_device_framing(jpeg: bytes, box: list[int], um_per_px: float | None) -> bytes:
    from PIL import Image

    img = Image.open(io.BytesIO(jpeg)).convert("RGB")
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    side = CROP_UM / um_per_px if um_per_px else 1.6 * max(x2 - x1, y2 - y1)
    half = side / 2
    # a window past the field's edge is filled with black by PIL; the training reader frames the cell again
    region = img.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
    out = io.BytesIO()
    region.save(out, "JPEG", quality=95)
    return out.getvalue()


def export_confirmed(catalogue: Catalogue, out: Path) -> dict:
    """Write every cell an expert labelled in a signed verdict; returns counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, boxes = [], set()
    for smp in catalogue.samples():
        cells = {c["id"]: c for c in smp.cells}
        for v in smp.verdicts:
            for cid, label in sorted(v.cell_labels.items()):
                c = cells.get(cid)
                if c is None or not c.get("field_uid") or not label or label == "uncertain":
                    continue
                jpeg, um = catalogue.field(smp.study, c["field_uid"])
                rel = Path(smp.box) / label / f"{smp.study[-12:]}-{cid}.jpg"
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                (out / rel).write_bytes(crop_at_device_framing(jpeg, c["box"], um))
                m = smp.models[0] if smp.models else {}
                rows.append({"path": rel.as_posix(), "label": label, "box": smp.box,
                             "patient": f"{smp.box}/{smp.local_id}", "study": smp.study, "cell": cid,
                             "um_per_px": f"{um:.5f}" if um else "", "model": m.get("LKS-MODEL-NAME", ""),
                             "model_sha256": m.get("LKS-MODEL-SHA", ""), "box_label": c["final_label"],
                             "verdict": v.verdict, "expert": v.expert, "signed_at": v.signed_at})
                boxes.add(smp.box)
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)
    return {"cells": len(rows), "boxes": len(boxes), "out": str(out)}
