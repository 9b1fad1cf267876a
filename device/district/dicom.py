"""A finished sample as DICOM: one study per sample, three series.

- the fields: VL Microscopic Image Storage (1.2.840.10008.5.1.4.1.1.77.1.2), the stored JPEG carried as it is
  (JPEG Baseline transfer syntax: no re-encoding, so the district sees exactly what the box analysed). Chosen
  over VL Whole Slide Microscopy: a field is one camera frame at an unknown stage position, not a tiled slide;
  over VL Slide-Coordinates Microscopy: the box has no stage coordinates.
- the cells: a Comprehensive SR (built by highdicom) whose items name, for every cell, its region in its field
  (SCOORD, selected from the field's image), the model's label and probabilities, the uncertainty flag, the
  operator's decision and who made it, and the final label; plus the model(s) (name, version, sha256), the
  pixel size each field was measured at, the counts and the flags.
- the report: the PDF as Encapsulated PDF Storage.

Every UID is derived from the box's identity and the record (``uid()``), so sending again makes the very same
objects and Orthanc keeps one of each. The patient's name and age leave the box only when Settings says so;
otherwise the patient is a box-local pseudonym.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

VL_MICROSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.2"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
MANUFACTURER = "Leukoscope"
SCHEME = "99LKS"  # the project's private coding scheme: cell classes are named by the vocabulary's labels
FIELD_SERIES, SR_SERIES, PDF_SERIES, VERDICT_SERIES = 1, 2, 3, 4
SERIES_DESCRIPTION = {FIELD_SERIES: "Leukoscope fields", SR_SERIES: "Leukoscope cells",
                      PDF_SERIES: "Leukoscope report", VERDICT_SERIES: "Leukoscope district verdict"}


def code(value: str, meaning: str | None = None) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(value[:16], SCHEME, (meaning or value)[:64])


# The SR's concept names (read back by the district with the same codes)
C = {name: code(v, m) for name, (v, m) in {
    "root": ("LKS-RESULT", "Leukoscope white-cell screen"),
    "sample": ("LKS-SAMPLE", "Sample id"), "box": ("LKS-BOX", "Box identity"),
    "revision": ("LKS-REVISION", "Result revision"), "local": ("LKS-LOCALID", "Box-local sample number"),
    "model": ("LKS-MODEL", "Model"), "model_name": ("LKS-MODEL-NAME", "Model name"),
    "model_version": ("LKS-MODEL-VER", "Model version"), "model_sha": ("LKS-MODEL-SHA", "Model sha256"),
    "calibration": ("LKS-CALIB", "Pixel size and calibration"), "summary": ("LKS-SUMMARY", "Counts"),
    "flag": ("LKS-FLAG", "Flag"), "cell": ("LKS-CELL", "Cell"), "cell_id": ("LKS-CELL-ID", "Cell number"),
    "model_label": ("LKS-MODEL-LABEL", "Model label"), "final_label": ("LKS-FINAL-LABEL", "Final label"),
    "operator_label": ("LKS-OP-LABEL", "Operator label"), "reviewer": ("LKS-REVIEWER", "Reviewer"),
    "probability": ("LKS-PROB", "Top probability"), "probabilities": ("LKS-PROBS", "Probabilities"),
    "uncertain": ("LKS-UNCERTAIN", "Uncertainty flag"), "region": ("LKS-REGION", "Cell region"),
    "field": ("LKS-FIELD", "Field image"), "category": ("LKS-CATEGORY", "Final category"),
    "finished": ("LKS-FINISHED", "Finished"), "flag_level": ("LKS-FLAG-LEVEL", "Flag level"),
    # the district's verdict
    "verdict_root": ("LKS-VERDICT", "District verdict"), "verdict": ("LKS-VERDICT-TXT", "Verdict"),
    "expert": ("LKS-EXPERT", "Expert"), "role": ("LKS-ROLE", "Role"), "note": ("LKS-NOTE", "Note"),
    "signed": ("LKS-SIGNED", "Signed at"), "expert_label": ("LKS-EXP-LABEL", "Expert label"),
    "of_sr": ("LKS-OF", "Result reviewed"),
}.items()}
UNIT_RATIO = hd.sr.CodedConcept("1", "UCUM", "no units")
UNIT_COUNT = hd.sr.CodedConcept("{cells}", "UCUM", "cells")
UNIT_UM_PX = hd.sr.CodedConcept("um/{pixel}", "UCUM", "micrometre per pixel")


def uid(*parts) -> str:
    """A UID from its parts alone: 2.25 and 128 bits of their SHA-256 (the same record always gets the same UID;
    pydicom's generate_uid ignores its entropy sources under the 2.25 root and gives a random one)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def pseudonym(box_id: str, sample_id: int, created_at: str) -> str:
    return "LKS-" + hashlib.sha256(f"{box_id}/{sample_id}/{created_at}".encode()).hexdigest()[:12].upper()


@dataclass
class SampleRecord:
    """What the records layer gives for one finished sample (plain values; no database here)."""
    box_id: str
    sample_id: int
    sample_code: str
    created_at: str
    finished_at: str
    finished_by: str
    revision: int
    clinic: str
    patient_name: str = ""
    patient_age: str = ""
    patient_sex: str = ""
    result: dict = field(default_factory=dict)
    models: list[dict] = field(default_factory=list)
    fields: list[dict] = field(default_factory=list)  # id, jpeg (bytes), width, height, captured_at, um_per_px
    cells: list[dict] = field(default_factory=list)  # id, field_id, box, label, probability, probabilities, flag,
    # operator_label, reviewer, final_label, final_category
    pdf: bytes | None = None

    def study_uid(self) -> str:
        return uid(self.box_id, self.sample_id, self.created_at, "study")


def _dt(iso: str | None) -> tuple[str, str]:
    t = datetime.fromisoformat(iso) if iso else datetime.now(timezone.utc)
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S")


def _age(age: str) -> str:
    return f"{int(age):03d}Y" if age.isdigit() and int(age) < 1000 else ""


def _base(rec: SampleRecord, send_patient: bool, sop_class: str, sop_uid: str, series: int, modality: str,
          when: str | None) -> Dataset:
    """Patient, study, series, equipment and SOP common modules, shared by every object of the sample."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    pid = pseudonym(rec.box_id, rec.sample_id, rec.created_at)
    ds.PatientID = pid
    ds.IssuerOfPatientID = rec.box_id
    ds.PatientName = rec.patient_name[:64] if send_patient and rec.patient_name else pid + "^"
    ds.PatientBirthDate = ""
    ds.PatientSex = {"female": "F", "male": "M", "other": "O"}.get(rec.patient_sex, "") if send_patient else ""
    if send_patient and _age(rec.patient_age):
        ds.PatientAge = _age(rec.patient_age)
    ds.StudyInstanceUID = rec.study_uid()
    ds.StudyDate, ds.StudyTime = _dt(rec.created_at)
    ds.StudyID = str(rec.sample_id)[:16]
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = f"Leukoscope {rec.sample_code}"[:64]
    ds.SeriesInstanceUID = uid(rec.box_id, rec.sample_id, rec.created_at, "series", series)
    ds.SeriesNumber = series
    ds.SeriesDescription = SERIES_DESCRIPTION[series]
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = rec.clinic[:64]
    ds.StationName = rec.box_id[:16]  # QIDO-RS by box: a series-level attribute Orthanc indexes
    ds.ContentDate, ds.ContentTime = _dt(when)
    return ds


def field_image(rec: SampleRecord, f: dict, number: int, send_patient: bool) -> Dataset:
    """One field as a VL Microscopic Image, the box's JPEG kept byte for byte."""
    sop = uid(rec.box_id, rec.sample_id, rec.created_at, "field", f["id"])
    ds = _base(rec, send_patient, VL_MICROSCOPIC, sop, FIELD_SERIES, "GM", f.get("captured_at"))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionDateTime = "".join(_dt(f.get("captured_at")))
    ds.Rows, ds.Columns = int(f["height"]), int(f["width"])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.BurnedInAnnotation = "NO"
    ds.PatientOrientation = ""
    ds.AcquisitionContextSequence = []
    # the specimen is the smear: the sample id names both the slide (container) and the specimen
    ds.ContainerIdentifier = rec.sample_code[:64]
    ds.IssuerOfTheContainerIdentifierSequence = []
    ds.ContainerTypeCodeSequence = []
    spec = Dataset()
    spec.SpecimenIdentifier = rec.sample_code[:64]
    spec.SpecimenUID = uid(rec.box_id, rec.sample_id, rec.created_at, "specimen")
    spec.IssuerOfTheSpecimenIdentifierSequence = []
    spec.SpecimenShortDescription = "Peripheral blood smear"
    spec.SpecimenPreparationSequence = []
    ds.SpecimenDescriptionSequence = [spec]
    if f.get("um_per_px"):
        # the field's own measured pixel size (mm, row then column spacing)
        mm = round(float(f["um_per_px"]) / 1000.0, 9)
        ds.PixelSpacing = [mm, mm]
    ds.PixelData = encapsulate([f["jpeg"]])
    ds["PixelData"].VR = "OB"
    return ds


def _text(name: str, value: str, rel="HAS PROPERTIES") -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(C[name], str(value)[:1024] or "-", relationship_type=rel)


def _num(name: str, value: float, unit=UNIT_COUNT, rel="HAS PROPERTIES") -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(C[name], float(value), unit, relationship_type=rel)


def _label(name: str, label: str, rel="HAS PROPERTIES") -> hd.sr.CodeContentItem:
    return hd.sr.CodeContentItem(C[name], code(label, label), relationship_type=rel)


def cells_report(rec: SampleRecord, images: list[Dataset], send_patient: bool) -> Dataset:
    """The cells, their labels and decisions, the model and the counts, as a Comprehensive SR over the fields."""
    by_field = {f["id"]: img for f, img in zip(rec.fields, images)}
    items = [_text("sample", rec.sample_code, "HAS OBS CONTEXT"), _text("box", rec.box_id, "HAS OBS CONTEXT"),
             _num("local", rec.sample_id, UNIT_RATIO, "HAS OBS CONTEXT"),
             _num("revision", rec.revision, UNIT_RATIO, "HAS OBS CONTEXT"),
             _text("finished", f"{rec.finished_at} by {rec.finished_by}", "HAS OBS CONTEXT")]
    for m in rec.models:
        mc = hd.sr.ContainerContentItem(C["model"], relationship_type="HAS OBS CONTEXT")
        mc.ContentSequence = hd.sr.ContentSequence([_text("model_name", m.get("name", "")),
                                                   _text("model_version", m.get("version", "")),
                                                   _text("model_sha", m.get("sha256", ""))])
        items.append(mc)
    items.append(_text("calibration", json.dumps({str(f["id"]): f.get("um_per_px") for f in rec.fields}),
                       "HAS OBS CONTEXT"))
    summary = {k: rec.result.get(k) for k in ("by_label", "by_category", "leukocytes", "malignant",
                                              "malignant_fraction", "malignant_ci", "target", "uncertain")}
    items.append(_text("summary", json.dumps(summary, sort_keys=True), "CONTAINS"))
    for fl in rec.result.get("flags", []):
        items.append(_text("flag", f"{fl.get('level')}: {fl.get('message')}", "CONTAINS"))
    for c in rec.cells:
        cc = hd.sr.ContainerContentItem(C["cell"], relationship_type="CONTAINS")
        img = by_field[c["field_id"]]
        x1, y1, x2, y2 = (float(v) for v in c["box"])
        region = hd.sr.ScoordContentItem(C["region"], "POLYLINE",
                                         np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]]),
                                         relationship_type="CONTAINS")
        region.ContentSequence = hd.sr.ContentSequence([hd.sr.ImageContentItem(
            C["field"], img.SOPClassUID, img.SOPInstanceUID, relationship_type="SELECTED FROM")])
        sub = [_num("cell_id", c["id"], UNIT_RATIO), _label("final_label", c["final_label"]),
               _text("category", c["final_category"]), _label("model_label", c["label"]),
               _num("probability", c["probability"], UNIT_RATIO),
               _text("probabilities", json.dumps(c["probabilities"], sort_keys=True))]
        if c.get("flag"):
            sub.append(_text("uncertain", c["flag"]))
        if c.get("operator_label"):
            sub += [_label("operator_label", c["operator_label"]), _text("reviewer", c.get("reviewer") or "")]
        sub.append(region)
        cc.ContentSequence = hd.sr.ContentSequence(sub)
        items.append(cc)
    root = hd.sr.ContainerContentItem(C["root"])
    root.ContentSequence = hd.sr.ContentSequence(items)
    sop = uid(rec.box_id, rec.sample_id, rec.created_at, "sr", rec.revision)
    sr = hd.sr.ComprehensiveSR(evidence=images, content=root, series_instance_uid=uid(
        rec.box_id, rec.sample_id, rec.created_at, "series", SR_SERIES), series_number=SR_SERIES,
        sop_instance_uid=sop, instance_number=rec.revision, manufacturer=MANUFACTURER, is_complete=True,
        is_final=False, institution_name=rec.clinic[:64] or None)
    _stamp(sr, rec, send_patient, SR_SERIES, rec.finished_at)
    return sr


def _stamp(ds: Dataset, rec: SampleRecord, send_patient: bool, series: int, when: str | None) -> None:
    """highdicom copies patient and study from the evidence; set the series' own description, station and
    times (deterministic, from the record, so a resend is byte-identical)."""
    ref = _base(rec, send_patient, ds.SOPClassUID, ds.SOPInstanceUID, series, ds.Modality, when)
    for kw in ("SeriesDescription", "StationName", "ContentDate", "ContentTime", "PatientName", "PatientID",
               "IssuerOfPatientID", "StudyDescription", "StudyID", "InstitutionName"):
        setattr(ds, kw, getattr(ref, kw))
    for kw in ("InstanceCreationDate", "InstanceCreationTime", "SeriesDate", "SeriesTime"):
        if kw in ds:
            delattr(ds, kw)
    for item in ds.get("ContributingEquipmentSequence", []):
        item.ContributionDateTime = "".join(_dt(when))


def encapsulated_pdf(rec: SampleRecord, send_patient: bool) -> Dataset:
    sop = uid(rec.box_id, rec.sample_id, rec.created_at, "pdf", rec.revision)
    ds = _base(rec, send_patient, ENCAPSULATED_PDF, sop, PDF_SERIES, "DOC", rec.finished_at)
    ds.InstanceNumber = rec.revision
    ds.ConversionType = "WSD"
    ds.AcquisitionDateTime = "".join(_dt(rec.finished_at))
    ds.BurnedInAnnotation = "YES"
    ds.DocumentTitle = f"Leukoscope report {rec.sample_code}"[:64]
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    data = rec.pdf or b""
    ds.EncapsulatedDocument = data + (b"\0" if len(data) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(data)
    return ds


def sample_objects(rec: SampleRecord, send_patient: bool = False) -> list[Dataset]:
    """Every object of one finished sample: its fields, the cells' report, the PDF (when given)."""
    images = [field_image(rec, f, i, send_patient) for i, f in enumerate(rec.fields, 1)]
    out = images + [cells_report(rec, images, send_patient)]
    if rec.pdf:
        out.append(encapsulated_pdf(rec, send_patient))
    return out


def to_bytes(ds: Dataset) -> bytes:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ---- reading an SR back (the district, and the box reading a verdict) --------------------------------

def items_of(seq) -> list[tuple[str, Dataset]]:
    """(concept code value, item) of a content sequence, in order."""
    out = []
    for it in seq or []:
        name = it.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in it else ""
        out.append((name, it))
    return out


def value_of(it: Dataset):
    t = it.ValueType
    if t == "TEXT":
        return str(it.TextValue)
    if t == "NUM":
        return float(it.MeasuredValueSequence[0].NumericValue)
    if t == "CODE":
        return str(it.ConceptCodeSequence[0].CodeMeaning)
    if t == "SCOORD":
        return [float(v) for v in it.GraphicData]
    if t == "IMAGE":
        return str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    if t == "UIDREF":
        return str(it.UID)
    return None


def read_cells_report(sr: Dataset) -> dict:
    """The cells' report back as plain values: sample code, box, local id, revision, models, cells."""
    out: dict = {"models": [], "cells": [], "flags": []}
    keys = {"LKS-SAMPLE": "sample_code", "LKS-BOX": "box", "LKS-LOCALID": "local_id", "LKS-REVISION": "revision",
            "LKS-SUMMARY": "summary", "LKS-FINISHED": "finished", "LKS-CALIB": "calibration"}
    for name, it in items_of(sr.ContentSequence):
        if name in keys:
            out[keys[name]] = value_of(it)
        elif name == "LKS-FLAG":
            out["flags"].append(value_of(it))
        elif name == "LKS-MODEL":
            out["models"].append({n: value_of(i) for n, i in items_of(it.ContentSequence)})
        elif name == "LKS-CELL":
            cell: dict = {}
            for n, i in items_of(it.ContentSequence):
                if n == "LKS-REGION":
                    xs, ys = i.GraphicData[0::2], i.GraphicData[1::2]
                    cell["box"] = [int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))]
                    cell["field_uid"] = value_of(i.ContentSequence[0])
                else:
                    cell[n] = value_of(i)
            out["cells"].append({"id": int(cell["LKS-CELL-ID"]), "final_label": cell.get("LKS-FINAL-LABEL"),
                                 "category": cell.get("LKS-CATEGORY"), "model_label": cell.get("LKS-MODEL-LABEL"),
                                 "probability": cell.get("LKS-PROB"), "flag": cell.get("LKS-UNCERTAIN"),
                                 "operator_label": cell.get("LKS-OP-LABEL"), "reviewer": cell.get("LKS-REVIEWER"),
                                 "box": cell.get("box"), "field_uid": cell.get("field_uid")})
    for k in ("local_id", "revision"):
        if k in out:
            out[k] = int(out[k])
    if isinstance(out.get("summary"), str):
        out["summary"] = json.loads(out["summary"])
    return out


# ---- the verdict (written at the district, read on the box) ----------------------------------------

@dataclass
class Verdict:
    verdict: str  # "blasts confirmed", "no blasts: false alarm", or the expert's own words
    expert: str
    role: str
    note: str
    signed_at: str
    cell_labels: dict[int, str]  # box-local cell id -> the expert's label
    sop_uid: str = ""
    study_uid: str = ""
    box: str = ""
    local_id: int = 0
    of_sr: str = ""


def verdict_object(cells_sr: Dataset, v: Verdict) -> Dataset:
    """The expert's verdict as a new Comprehensive SR in the sample's study (its own series), referencing the
    cells' report it judges: the original is never edited."""
    info = read_cells_report(cells_sr)
    sop = uid(cells_sr.SOPInstanceUID, "verdict", v.expert, v.signed_at)
    items = [_text("box", info["box"], "HAS OBS CONTEXT"), _num("local", info["local_id"], UNIT_RATIO, "HAS OBS CONTEXT"),
             _text("expert", v.expert, "HAS OBS CONTEXT"), _text("role", v.role, "HAS OBS CONTEXT"),
             _text("signed", v.signed_at, "HAS OBS CONTEXT"),
             hd.sr.CompositeContentItem(C["of_sr"], cells_sr.SOPClassUID, cells_sr.SOPInstanceUID,
                                        relationship_type="CONTAINS"),
             _text("verdict", v.verdict, "CONTAINS")]
    if v.note:
        items.append(_text("note", v.note, "CONTAINS"))
    for cid, label in sorted(v.cell_labels.items()):
        cc = hd.sr.ContainerContentItem(C["cell"], relationship_type="CONTAINS")
        cc.ContentSequence = hd.sr.ContentSequence([_num("cell_id", cid, UNIT_RATIO), _label("expert_label", label)])
        items.append(cc)
    root = hd.sr.ContainerContentItem(C["verdict_root"])
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(evidence=[cells_sr], content=root, series_instance_uid=uid(
        cells_sr.StudyInstanceUID, "verdict-series"), series_number=VERDICT_SERIES, sop_instance_uid=sop,
        instance_number=1, manufacturer=MANUFACTURER + " district", is_complete=True, is_final=True,
        is_verified=True, verifying_observer_name=v.expert[:64], verifying_organization="district")
    sr.SeriesDescription = SERIES_DESCRIPTION[VERDICT_SERIES]
    sr.StationName = str(info["box"])[:16]  # the box polls its own station's verdicts
    return sr


def read_verdict(sr: Dataset) -> Verdict:
    vals: dict = {}
    labels: dict[int, str] = {}
    for name, it in items_of(sr.ContentSequence):
        if name == "LKS-CELL":
            sub = {n: value_of(i) for n, i in items_of(it.ContentSequence)}
            labels[int(sub["LKS-CELL-ID"])] = sub["LKS-EXP-LABEL"]
        elif name == "LKS-OF":
            vals[name] = str(it.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        else:
            vals[name] = value_of(it)
    return Verdict(vals.get("LKS-VERDICT-TXT", ""), vals.get("LKS-EXPERT", ""), vals.get("LKS-ROLE", ""),
                   vals.get("LKS-NOTE", ""), vals.get("LKS-SIGNED", ""), labels, str(sr.SOPInstanceUID),
                   str(sr.StudyInstanceUID), vals.get("LKS-BOX", ""), int(vals.get("LKS-LOCALID", 0)),
                   vals.get("LKS-OF", ""))
