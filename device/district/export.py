"""A finished sample's records -> the plain ``SampleRecord`` the DICOM builder takes (records calls only)."""
from __future__ import annotations

import json

from device import records
from device.district.dicom import SampleRecord
from device.records import district as outbox


def sample_record(store, sample_id: int, revision: int, clinic: str, pdf: bytes | None = None) -> SampleRecord:
    s = records.get_sample(store, sample_id)
    fields = []
    for f in records.fields_of(store, sample_id):
        scale = (json.loads(f["qc_json"] or "{}").get("scale") or {})
        fields.append({"id": f["id"], "jpeg": store.path(f["image_path"]).read_bytes(), "width": f["width"],
                       "height": f["height"], "captured_at": f["captured_at"], "um_per_px": scale.get("um_per_px")})
    cells = []
    for c in records.cells_of(store, sample_id):
        final, cat = records.cell_final(c)
        cells.append({"id": c["id"], "field_id": c["field_id"], "box": (c["x1"], c["y1"], c["x2"], c["y2"]),
                      "label": c["label"], "probability": c["probability"],
                      "probabilities": json.loads(c["probabilities_json"]), "flag": c["flag"],
                      "operator_label": c["operator_label"], "reviewer": c["reviewer"], "final_label": final,
                      "final_category": cat})
    return SampleRecord(
        box_id=outbox.box_identity(store), sample_id=sample_id, sample_code=s["sample_code"],
        created_at=s["created_at"], finished_at=s["finished_at"] or "", finished_by=s["finished_by"] or "",
        revision=revision, clinic=clinic, patient_name=s["patient_name"], patient_age=s["patient_age"],
        patient_sex=s["patient_sex"], result=json.loads(s["result_json"] or "{}"),
        models=records.models_of(store, sample_id), fields=fields, cells=cells, pdf=pdf)
