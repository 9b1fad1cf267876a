"""Verdicts come back: QIDO-RS for the verdict series of this box's station, WADO-RS for each new one.

A verdict is accepted only if it is about a sample this box sent (its study UID is one of this box's, its box
identity is this box's, its cells are the sample's cells): an Orthanc that answers with another box's object,
or an object that is not a verdict, is refused with a reason in the audit log, once, and nothing is stored.
"""
from __future__ import annotations

import logging

from device.district import dicom
from device.district.link import Link, tag_value
from device.records import district as outbox

log = logging.getLogger("leukoscope.district")
STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"


def fetch_verdicts(store, link: Link, refused: set[str]) -> int:
    """Store every new verdict on this box's samples; returns how many were stored."""
    box = outbox.box_identity(store)
    series = link.search("/series", {"StationName": box, "Modality": "SR",
                                     "SeriesNumber": str(dicom.VERDICT_SERIES)})
    known = outbox.known_verdicts(store)
    sent = outbox.sent_studies(store)
    stored = 0
    for s in series:
        st, se = tag_value(s, STUDY), tag_value(s, SERIES)
        if not st or not se:
            continue
        for inst in link.search(f"/studies/{st}/series/{se}/instances"):
            sop = tag_value(inst, SOP)
            if not sop or sop in known or sop in refused:
                continue
            reason = None
            try:
                ds = link.retrieve(st, se, sop)
                v = dicom.read_verdict(ds)
            except (KeyError, AttributeError, ValueError, IndexError) as exc:
                reason = f"not a readable verdict ({type(exc).__name__}: {exc})"
            else:
                if v.box != box:
                    reason = f"a verdict for another box ({v.box!r})"
                elif sent.get(v.study_uid) != v.local_id:
                    reason = "a verdict on a study this box did not send"
            if reason is None:
                try:
                    if outbox.save_verdict(store, v.local_id, v.sop_uid, v.expert, v.role, v.verdict, v.note,
                                           v.signed_at, v.cell_labels):
                        stored += 1
                        log.info("verdict on sample %d from %s: %s", v.local_id, v.expert, v.verdict)
                    continue
                except ValueError as exc:
                    reason = str(exc)
            refused.add(sop)
            log.warning("district object %s refused: %s", sop, reason)
            outbox.audit_refusal(store, "district-verdict-refused", {"object": sop, "study": st, "reason": reason})
    return stored
