"""What the district page reads from Orthanc over DICOMweb: every box's samples (their cells' reports), the
field images, and the verdicts already signed. Parsed reports and field images are cached by SOP UID: a stored
DICOM object never changes."""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from device.district import dicom
from device.district.link import Link, tag_value

STUDY, SERIES, SOP, NUMBER = "0020000D", "0020000E", "00080018", "00200013"
GROUP_ORDER = ("uncertain", "malignant", "atypical", "normal", "non-leukocyte")


@dataclass
class Sample:
    study: str
    series: str
    sop: str
    box: str
    clinic: str
    code: str
    local_id: int
    revision: int
    date: str  # YYYY-MM-DD of the study
    finished: str
    level: str  # "refer", "review", "insufficient" or "none": the highest flag
    flags: list[str]
    summary: dict
    models: list[dict]
    cells: list[dict] = field(default_factory=list)
    verdicts: list = field(default_factory=list)


def level_of(flags: list[str]) -> str:
    levels = [f.split(":", 1)[0] for f in flags]
    for lvl in ("refer", "review", "insufficient"):
        if lvl in levels:
            return lvl
    return "none"


class Catalogue:
    def __init__(self, link: Link, cache_images: int = 64):
        self.link = link
        self._reports: dict[str, object] = {}
        self._images: OrderedDict[str, tuple] = OrderedDict()
        self._max_images = cache_images
        self._lock = threading.Lock()

    def _instances(self, study: str, series: str) -> list[dict]:
        return self.link.search(f"/studies/{study}/series/{series}/instances", {"includefield": NUMBER})

    def _report(self, study: str, series: str, sop: str):
        with self._lock:
            ds = self._reports.get(sop)
        if ds is None:
            ds = self.link.retrieve(study, series, sop)
            with self._lock:
                self._reports[sop] = ds
        return ds

    def verdicts(self) -> dict[str, list[dicom.Verdict]]:
        """Study UID -> the verdicts signed on it."""
        out: dict[str, list] = {}
        for s in self.link.search("/series", {"Modality": "SR",
                                              "SeriesNumber": str(dicom.VERDICT_SERIES)}):
            st, se = tag_value(s, STUDY), tag_value(s, SERIES)
            for inst in self._instances(st, se):
                v = dicom.read_verdict(self._report(st, se, tag_value(inst, SOP)))
                out.setdefault(st, []).append(v)
        return out

    def samples(self, box: str = "", date_from: str = "", date_to: str = "", level: str = "") -> list[Sample]:
        """Every box's samples (latest revision of each), referred first, then newest first."""
        params = {"Modality": "SR", "SeriesNumber": str(dicom.SR_SERIES)}
        if box:
            params["StationName"] = box
        verdicts = self.verdicts()
        out = []
        for s in self.link.search("/series", params):
            smp = self.sample(tag_value(s, STUDY), tag_value(s, SERIES), verdicts)
            if smp is None:
                continue
            if (date_from and smp.date < date_from) or (date_to and smp.date > date_to):
                continue
            if level and smp.level != level:
                continue
            out.append(smp)
        rank = {"refer": 0, "review": 1, "insufficient": 2, "none": 3}
        out.sort(key=lambda x: x.finished, reverse=True)
        out.sort(key=lambda x: rank.get(x.level, 9))
        return out

    def sample(self, study: str, series: str | None = None, verdicts=None) -> Sample | None:
        if series is None:
            found = self.link.search(f"/studies/{study}/series", {"SeriesNumber": str(dicom.SR_SERIES)})
            if not found:
                return None
            series = tag_value(found[0], SERIES)
        insts = self._instances(study, series)
        if not insts:
            return None
        latest = max(insts, key=lambda i: int(tag_value(i, NUMBER, 0) or 0))
        sop = tag_value(latest, SOP)
        ds = self._report(study, series, sop)
        info = dicom.read_cells_report(ds)
        d = str(ds.get("StudyDate", ""))
        if verdicts is None:
            verdicts = self.verdicts()
        return Sample(study, series, sop, str(ds.get("StationName", "")), str(ds.get("InstitutionName", "")),
                      info.get("sample_code", ""), info.get("local_id", 0), info.get("revision", 1),
                      f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 else "", info.get("finished", ""),
                      level_of(info["flags"]), info["flags"], info.get("summary") or {}, info["models"],
                      info["cells"], verdicts.get(study, []))

    def report_dataset(self, smp: Sample):
        return self._report(smp.study, smp.series, smp.sop)

    def field_jpeg(self, study: str, sop: str) -> bytes:
        """A field's JPEG as the box stored it (the DICOM object carries it unchanged)."""
        return self.field(study, sop)[0]

    def field(self, study: str, sop: str) -> tuple[bytes, float | None]:
        """(JPEG, um per pixel) of a field; cached."""
        from pydicom.encaps import generate_frames

        with self._lock:
            if sop in self._images:
                self._images.move_to_end(sop)
                return self._images[sop]
        series = uid_series(self.link, study, dicom.FIELD_SERIES)
        ds = self.link.retrieve(study, series, sop)
        jpeg = next(generate_frames(ds.PixelData, number_of_frames=1))
        um = float(ds.PixelSpacing[1]) * 1000 if "PixelSpacing" in ds else None
        with self._lock:
            self._images[sop] = (jpeg, um)
            while len(self._images) > self._max_images:
                self._images.popitem(last=False)
        return jpeg, um

    def cell_jpeg(self, study: str, cell: dict, margin: float = 0.25) -> bytes:
        from PIL import Image

        img = Image.open(io.BytesIO(self.field_jpeg(study, cell["field_uid"])))
        x1, y1, x2, y2 = cell["box"]
        m = int(max(x2 - x1, y2 - y1) * margin)
        crop = img.crop((max(0, x1 - m), max(0, y1 - m), min(img.width, x2 + m), min(img.height, y2 + m)))
        out = io.BytesIO()
        crop.convert("RGB").save(out, "JPEG", quality=90)
        return out.getvalue()


def uid_series(link: Link, study: str, number: int) -> str:
    # by series number: Orthanc's QIDO-RS does not match on SeriesDescription
    found = link.search(f"/studies/{study}/series", {"SeriesNumber": str(number)})
    if not found:
        raise LookupError(f"no series {number} in study {study}")
    return tag_value(found[0], SERIES)


def gallery(cells: list[dict]) -> list[dict]:
    """Cells grouped by final label as the box shows them: uncertain, blasts, atypical, normal, non-leukocytes;
    within a group the least confident first."""
    groups: dict[str, dict] = {}
    for c in cells:
        g = groups.setdefault(c["final_label"], {"label": c["final_label"], "category": c["category"], "cells": []})
        g["cells"].append(c)
    for g in groups.values():
        g["cells"].sort(key=lambda c: c["probability"] or 0)
    return sorted(groups.values(), key=lambda g: (GROUP_ORDER.index(g["category"]) if g["category"] in GROUP_ORDER
                                                  else 9, -len(g["cells"]), g["label"]))
