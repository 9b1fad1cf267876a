"""A finished sample's records -> the plain ``SampleRecord`` the DICOM builder takes (records calls only)."""
from __future__ import annotations

import json

from device.records import samples
from device.district.dicom import SampleRecord
from device.records import district as outbox


def sample_record(store, sample_id: int, revision: int, clinic: str, pdf: bytes | None = None) -> SampleRecord:
    s = samples.get_sample(store, sample_id)
    fields, factor = [], {}
    for f in samples.fields_of(store, sample_id):
        scale = (json.loads(f["qc_json"] or "{}").get("scale") or {})
        jpeg = store.path(f["image_path"]).read_bytes()
        w, h = _jpeg_size(jpeg)
        # the stored field may be a reduced copy of the frame (cells keep the frame's coordinates): the DICOM
        # image is the stored JPEG, so its size, pixel spacing and the cells' regions are the stored copy's
        k = w / f["width"] if f["width"] else 1.0
        factor[f["id"]] = k
        um = scale.get("um_per_px")
        fields.append({"id": f["id"], "jpeg": jpeg, "width": w, "height": h, "captured_at": f["captured_at"],
                       "um_per_px": um / k if um else None})
    cells = []
    for c in samples.cells_of(store, sample_id):
        final, cat = samples.cell_final(c)
        k = factor.get(c["field_id"], 1.0)
        box = tuple(round(v * k) for v in (c["x1"], c["y1"], c["x2"], c["y2"]))
        cells.append({"id": c["id"], "field_id": c["field_id"], "box": box,
                      "label": c["label"], "probability": c["probability"],
                      "probabilities": json.loads(c["probabilities_json"]), "flag": c["flag"],
                      "operator_label": c["operator_label"], "reviewer": c["reviewer"], "final_label": final,
                      "final_category": cat})
    return SampleRecord(
        box_id=outbox.box_identity(store), sample_id=sample_id, sample_code=s["sample_code"],
        created_at=s["created_at"], finished_at=s["finished_at"] or "", finished_by=s["finished_by"] or "",
        revision=revision, clinic=clinic, patient_name=s["patient_name"], patient_age=s["patient_age"],
        patient_sex=s["patient_sex"], result=json.loads(s["result_json"] or "{}"),
        models=samples.models_of(store, sample_id), fields=fields, cells=cells, pdf=pdf)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    from PIL import Image
    import io

    with Image.open(io.BytesIO(data)) as im:  # reads the header only
        return im.size
