"""Samples, their fields and cells: create, add analysed fields, review cells, finish, search, delete."""
from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter

from device.model import vocabulary
from device.imageio import encode_jpeg
from device.model.analyzer import FieldAnalysis
from device.records.counts import (NOT_A_CELL, POSSIBLE_BLAST, CountedCell, SampleSummary, category_of, final_label,
                                   needs_decision, summarize)
from device.records.store import Store, StorageFull, now
from device.records.repeats import HELD_FIELDS, repeat_of, view_hash
from device.records.calibrations import decision_role, encode_embedding


class RecordError(ValueError):
    """A request that cannot be carried out; the message is for the operator."""


class Discarded(RecordError):
    """The capture's caller gave up before its rows were written: nothing was saved."""


FINISHED = "this sample is finished; start a new sample to capture more"
PATIENT_SEXES = ("female", "male", "other")


def patient_age_ok(age: str) -> bool:
    """An age is a whole number of years from 0 to 120, or not given."""
    return not age or bool(re.fullmatch(r"\d{1,3}", age)) and int(age) <= 120


def patient_sex(value: str) -> str:
    """The sex recorded: one of ``PATIENT_SEXES``, "" when not given; anything else is recorded as "other"."""
    return value if value in ("", *PATIENT_SEXES) else "other"


def create_sample(store: Store, code: str, user: str, operator_id: int | None = None, patient_name: str = "",
                  patient_age: str = "", patient_sex: str = "", note: str = "", target: int = 100,
                  model_name: str = "", model_sha256: str = "") -> int:
    code = code.strip()
    if not code:
        raise RecordError("a sample id is required")
    with store.transaction() as tx:
        cur = tx.execute(
            "INSERT INTO samples (sample_code, patient_name, patient_age, patient_sex, note, operator_id, target, "
            "model_name, model_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (code, patient_name.strip(), patient_age.strip(), patient_sex.strip(), note.strip(), operator_id,
             int(target), model_name, model_sha256, now()))
        sid = cur.lastrowid
        store.audit(user, "create-sample", f"sample:{sid}", {"sample_code": code}, conn=tx)
    return sid


def get_sample(store: Store, sample_id: int) -> sqlite3.Row:
    row = store.connect().execute(
        "SELECT s.*, u.username AS operator FROM samples s LEFT JOIN users u ON u.id = s.operator_id WHERE s.id = ?",
        (sample_id,)).fetchone()
    if row is None:
        raise RecordError(f"no sample {sample_id}")
    return row


def save_field(store: Store, sample_id: int, image, analysis: FieldAnalysis, user: str,
               captured_at: str | None = None, source: str = "", may_commit=None, model=None,
               calibration=None) -> int:
    """Images first (atomically), then the rows in one transaction. The sample's status is checked
    again inside that transaction, so a field can never land in a sample finished meanwhile.
    ``may_commit()`` is asked there too (False: the caller gave up, nothing is saved); ``model``
    (a Bundle) is recorded with the field, so a report names the model that really classified it, and
    ``calibration`` (the site calibration it used, or None) beside it."""
    sample = get_sample(store, sample_id)
    if sample["status"] != "open":  # early, before the encoding work; the rule itself is below
        raise RecordError(FINISHED)
    t0 = time.perf_counter()
    # bounded in size (boxes keep the frame's coordinates): the copy the analysis made, never made again here
    field_jpeg = encode_jpeg(analysis.stored, quality=92)
    crops = [encode_jpeg(c.crop, quality=90) for c in analysis.cells]
    store.check_space(len(field_jpeg) + sum(map(len, crops)))
    written = []
    try:
        field_rel = store.write_file(store.new_name(sample_id, ".jpg"), field_jpeg)
        written.append(field_rel)
        crop_rels = []
        for data in crops:
            rel = store.write_file(store.new_name(sample_id, ".jpg"), data)
            written.append(rel)
            crop_rels.append(rel)
        with store.transaction() as tx:
            status = tx.execute("SELECT status FROM samples WHERE id = ?", (sample_id,)).fetchone()
            if status is None or status[0] != "open":
                raise RecordError(FINISHED if status else f"no sample {sample_id}")
            if may_commit is not None and not may_commit():
                raise Discarded("the capture was cancelled by its caller")
            h, w = image.shape[:2]
            meta = model.meta if model is not None else None
            qc_data = {**analysis.qc.figures(), "scale": analysis.scale.to_dict() if analysis.scale else None}
            if analysis.qc.ok and analysis.cells:
                # the same view again (key repeat, a double click, the same file twice, an unmoved slide): kept,
                # but held out of every count until someone says it is a new view (``count_repeated_field``)
                qc_data["view_hash"] = view_hash(analysis.stored)
                same = repeat_of(tx, sample_id, qc_data["view_hash"], [c.found.box for c in analysis.cells], w, h)
                if same is not None:
                    qc_data.update(repeat_of=same, held=True)
            cur = tx.execute(
                "INSERT INTO fields (sample_id, image_path, captured_at, source, width, height, qc_ok, qc_message, "
                "qc_json, analysis_ms, model_name, model_version, model_sha256, calibration_id, calibration_name) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sample_id, field_rel, captured_at or now(), source, w, h, int(analysis.qc.ok), analysis.qc.message,
                 json.dumps(qc_data),
                 analysis.timings_ms.get("total"), meta.name if meta else "",
                 meta.version if meta else "", model.sha256 if model is not None else "",
                 getattr(calibration, "record_id", None), calibration.name if calibration is not None else ""))
            fid = cur.lastrowid
            for c, rel in zip(analysis.cells, crop_rels):
                p = c.prediction
                tx.execute(
                    "INSERT INTO cells (field_id, sample_id, x1, y1, x2, y2, crop_path, label, category, probability, "
                    "probabilities_json, flag, embedding, model_probabilities) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (fid, sample_id, *c.found.box, rel, p.label, p.category, p.probability,
                     json.dumps({k: round(v, 5) for k, v in p.probabilities.items()}), p.flag,
                     encode_embedding(getattr(p, "embedding", None)),
                     encode_embedding(getattr(p, "model_probabilities", None))))
            store.audit(user, "capture", f"sample:{sample_id}", {"field": fid, "cells": len(crop_rels),
                                                                  "qc": analysis.qc.message,
                                                                  "repeat_of": qc_data.get("repeat_of"),
                                                                  "save_ms": round((time.perf_counter() - t0) * 1000, 1)},
                        conn=tx)
    except BaseException:
        store.remove_files(written)  # nothing points to them: the transaction did not commit
        raise
    return fid


def fields_of(store: Store, sample_id: int) -> list[sqlite3.Row]:
    return store.connect().execute("SELECT * FROM fields WHERE sample_id = ? ORDER BY id", (sample_id,)).fetchall()


def cells_of(store: Store, sample_id: int, field_id: int | None = None) -> list[sqlite3.Row]:
    """The sample's cells (without those of a field held as a repeated view: they are in no count, review or
    export), or every cell of one field."""
    sql = ("SELECT c.*, u.username AS reviewer FROM cells c LEFT JOIN users u ON u.id = c.reviewer_id "
           "WHERE c.sample_id = ?")
    args: tuple = (sample_id,)
    if field_id is not None:
        sql += " AND c.field_id = ?"
        args += (field_id,)
    else:
        sql += f" AND c.field_id NOT IN ({HELD_FIELDS})"
        args += (sample_id,)
    return store.connect().execute(sql + " ORDER BY c.id", args).fetchall()


def cell_final(row) -> tuple[str, str]:
    """The final (label, category) of a stored cell: the one rule of ``device.records.counts.final_label``."""
    return final_label(row["label"], row["flag"], row["operator_label"])


def cell_undecided(row) -> bool:
    return needs_decision(row["flag"], row["operator_label"])


def cell_reclassified(row) -> bool:
    """A reviewer chose another class than the model's (shown with "model: ..." beside it)."""
    return bool(row["operator_label"]) and row["operator_label"] != row["label"]


def reviewers_of(store: Store, sample_id: int) -> list[str]:
    """Who reviewed the sample's cells, in the order they first did."""
    return [r[0] for r in store.connect().execute(
        "SELECT u.username FROM cells c JOIN users u ON u.id = c.reviewer_id WHERE c.sample_id = ? "
        "GROUP BY u.username ORDER BY MIN(c.reviewed_at)", (sample_id,))]


def find_by_code(store: Store, code: str) -> list[sqlite3.Row]:
    """Samples already using this id (case and surrounding spaces ignored): a duplicate needs a decision."""
    return store.connect().execute("SELECT id, sample_code, created_at, status FROM samples "
                                   "WHERE sample_code = ? COLLATE NOCASE ORDER BY id", (code.strip(),)).fetchall()


GROUP_ORDER = (vocabulary.UNCERTAIN, "malignant", "atypical", "normal", "non-leukocyte")


def review_groups(cells) -> list[dict]:
    """Cells grouped by final label, as digital-morphology systems show them: undecided uncertain cells first,
    then blasts/malignant, atypical, each normal class, then non-leukocytes. Within a group the least
    confident first."""
    groups: dict[str, dict] = {}
    for c in cells:
        name, cat = cell_final(c)
        if c["flag"] == POSSIBLE_BLAST and not c["operator_label"]:
            name = POSSIBLE_BLAST  # a suspected blast is never hidden among the other uncertain cells
        g = groups.setdefault(name, {"label": name, "category": cat, "cells": [], "left": 0})
        g["cells"].append(c)
        g["left"] += c["operator_label"] is None
    for g in groups.values():
        g["cells"].sort(key=lambda c: (c["operator_label"] is not None, c["probability"]))
        # "accept all" only where the model was confident: never for undecided uncertain cells (nor for a label
        # the vocabulary no longer has, which counts as uncertain)
        g["acceptable"] = g["category"] != vocabulary.UNCERTAIN and any(c["operator_label"] is None for c in g["cells"])
    return sorted(groups.values(), key=lambda g: (g["label"] != POSSIBLE_BLAST, GROUP_ORDER.index(g["category"]),
                                                  -len(g["cells"]), g["label"]))


def report_order(cells) -> list:
    """The order of the report's gallery: blasts and malignant, reclassified, uncertain, then the rest."""
    def rank(c):
        name, cat = cell_final(c)
        if cat == "malignant" or category_of(c["label"]) == "malignant" or c["flag"] == POSSIBLE_BLAST:
            return 0  # the final class, the model's, or the model's suspicion (even when a reviewer decided it)
        if cell_reclassified(c):
            return 1
        if cat == vocabulary.UNCERTAIN:
            return 2
        if cat == "atypical":
            return 3
        return 4
    return sorted(cells, key=lambda c: (rank(c), c["id"]))


HIGHLIGHTED = ("malignant", "atypical", vocabulary.UNCERTAIN)


def highlighted(cells) -> list:
    """The cells a result shows (in the report's order): malignant, atypical or uncertain in the end, reclassified
    by a reviewer, or suspected of being blasts by the model whatever a reviewer decided."""
    return [c for c in report_order(cells) if cell_final(c)[1] in HIGHLIGHTED or cell_reclassified(c)
            or c["flag"] == POSSIBLE_BLAST]


def possible_blasts(cells) -> dict:
    """The cells the model suspected of being blasts, and how they were decided: they stay visible on the result
    and the report whatever a reviewer chose."""
    suspected = [c for c in cells if c["flag"] == POSSIBLE_BLAST]
    decided = Counter(c["operator_label"] for c in suspected if c["operator_label"])
    return {"n": len(suspected), "decided": sorted(decided.items(), key=lambda kv: -kv[1]),
            "undecided": sum(1 for c in suspected if not c["operator_label"])}


def review_labels(model_labels, display) -> list[str]:
    """The classes a reviewer chooses from (``vocabulary.review_choices``), in the review's group order, then by
    the name shown (``display``)."""
    return sorted(vocabulary.review_choices(model_labels),
                  key=lambda n: (GROUP_ORDER.index(vocabulary.category_of(n)), display(n)))


def quick_labels(cell, keyed: list[str], n: int = 3) -> list[str]:
    """The one-tap buttons of a cell's card: the model's most probable classes, then a blast, if not among them."""
    try:
        probs = json.loads(cell["probabilities_json"] or "{}")
    except ValueError:
        probs = {}
    top = [k for k, _v in sorted(probs.items(), key=lambda kv: -kv[1]) if k in keyed][:n]
    blast = next((k for k in keyed if vocabulary.category_of(k) == "malignant"), None)
    if blast and not any(vocabulary.category_of(k) == "malignant" for k in top):
        top.append(blast)
    return top


def summary_of(store: Store, sample_id: int, rules, target: int | None = None, conn=None) -> SampleSummary:
    """``conn``: read inside that (open) transaction, so the summary matches what it then writes."""
    conn = conn or store.connect()
    sample = conn.execute("SELECT target FROM samples WHERE id = ?", (sample_id,)).fetchone()
    if sample is None:
        raise RecordError(f"no sample {sample_id}")
    rows = conn.execute("SELECT label, category, flag, operator_label FROM cells WHERE sample_id = ? "
                        f"AND field_id NOT IN ({HELD_FIELDS}) ORDER BY id", (sample_id, sample_id)).fetchall()
    counted = [CountedCell(r["label"], r["category"], r["flag"], r["operator_label"]) for r in rows]
    return summarize(counted, target if target is not None else sample["target"], rules,
                     site=site_of(store, sample_id, conn))


def site_of(store: Store, sample_id: int, conn=None) -> dict | None:
    """The site calibration the sample's refer rule uses: only when every field was classified under one
    calibration (a sample spanning a change, or fields without one, keeps the bundle's rule)."""
    conn = conn or store.connect()
    rows = conn.execute("SELECT DISTINCT f.calibration_id, c.figures_json, c.n_cells, c.created_at FROM fields f "
                        "LEFT JOIN calibrations c ON c.id = f.calibration_id WHERE f.sample_id = ?",
                        (sample_id,)).fetchall()
    if len(rows) != 1 or rows[0]["calibration_id"] is None or rows[0]["figures_json"] is None:
        return None
    k, n = json.loads(rows[0]["figures_json"]).get("false_calls", [None, None])
    if n is None:
        return None
    return {"false_call_rate": (k + 1) / (n + 2), "false_calls": [k, n], "calibration_id": rows[0]["calibration_id"],
            "name": f"calibrated on {rows[0]['n_cells']} cells reviewed on this box, {rows[0]['created_at'][:10]}"}


def models_of(store: Store, sample_id: int) -> list[dict]:
    """Every model that classified a field of the sample, in order of first use, with its field count."""
    rows = store.connect().execute(
        "SELECT model_name, model_version, model_sha256, COUNT(*) AS n, MIN(id) AS first FROM fields "
        "WHERE sample_id = ? GROUP BY model_name, model_version, model_sha256 ORDER BY first", (sample_id,))
    return [{"name": r["model_name"] or "(not recorded)", "version": r["model_version"], "sha256": r["model_sha256"],
             "fields": r["n"]} for r in rows]


def review_cell(store: Store, cell_id: int, label: str | None, user: str, user_id: int | None,
                confirm: bool = False) -> None:
    """Confirm the model's label (``confirm``: only for a cell the model called with confidence) or choose the
    cell's class. A label outside the vocabulary is refused."""
    if label is not None and label != NOT_A_CELL:
        vocabulary.label(label)
    with store.transaction() as tx:
        row = tx.execute("SELECT c.*, s.status FROM cells c JOIN samples s ON s.id = c.sample_id WHERE c.id = ?",
                         (cell_id,)).fetchone()
        if row is None:
            raise RecordError(f"no cell {cell_id}")
        if row["status"] != "open":
            raise RecordError("this sample is finished; its cells can no longer be changed")
        if confirm and (row["flag"] or label != row["label"]):
            raise RecordError("the model was not confident about this cell: choose its class instead of confirming")
        tx.execute("UPDATE cells SET operator_label = ?, reviewer_id = ?, reviewed_at = ?, reviewer_role = ? "
                   "WHERE id = ?", (label, user_id, now(), decision_role(tx, user_id), cell_id))
        action = ("confirm-cell" if label == row["label"] else "not-a-cell" if label == NOT_A_CELL
                  else "reclassify-cell")
        store.audit(user, action, f"cell:{cell_id}",
                    {"sample": row["sample_id"], "model": row["label"], "from": row["operator_label"], "to": label},
                    conn=tx)


def accept_class(store: Store, sample_id: int, label: str, user: str, user_id: int | None) -> int:
    """Confirm every unreviewed cell the model confidently called ``label`` (never an uncertain one)."""
    vocabulary.label(label)
    with store.transaction() as tx:
        status = tx.execute("SELECT status FROM samples WHERE id = ?", (sample_id,)).fetchone()
        if status is None:
            raise RecordError(f"no sample {sample_id}")
        if status[0] != "open":
            raise RecordError("this sample is finished; its cells can no longer be changed")
        cur = tx.execute("UPDATE cells SET operator_label = label, reviewer_id = ?, reviewed_at = ?, reviewer_role = ? "
                         "WHERE sample_id = ? AND label = ? AND flag IS NULL AND operator_label IS NULL",
                         (user_id, now(), decision_role(tx, user_id), sample_id, label))
        store.audit(user, "accept-class", f"sample:{sample_id}", {"label": label, "cells": cur.rowcount}, conn=tx)
        return cur.rowcount


def accept_confident(store: Store, sample_id: int, min_probability: float, user: str, user_id: int | None) -> int:
    """Confirm every unreviewed cell the model called a NORMAL class with at least ``min_probability``: an
    explicit, audited choice of the reviewer. Never a flagged cell (uncertain, possible blast, unfamiliar), never
    a blast or an atypical cell: those are looked at one by one."""
    if not 0.5 <= min_probability <= 1.0:
        raise RecordError("choose a probability between 50 and 100 %")
    with store.transaction() as tx:
        status = tx.execute("SELECT status FROM samples WHERE id = ?", (sample_id,)).fetchone()
        if status is None:
            raise RecordError(f"no sample {sample_id}")
        if status[0] != "open":
            raise RecordError("this sample is finished; its cells can no longer be changed")
        rows = tx.execute("SELECT id, label FROM cells WHERE sample_id = ? AND flag IS NULL AND operator_label IS NULL "
                          f"AND probability >= ? AND field_id NOT IN ({HELD_FIELDS})",
                          (sample_id, float(min_probability), sample_id)).fetchall()
        ids = [r["id"] for r in rows if category_of(r["label"]) == "normal"]
        t = now()
        tx.executemany("UPDATE cells SET operator_label = label, reviewer_id = ?, reviewed_at = ? WHERE id = ?",
                       [(user_id, t, i) for i in ids])
        store.audit(user, "accept-above", f"sample:{sample_id}",
                    {"min_probability": float(min_probability), "cells": len(ids), "classes": "normal only"}, conn=tx)
    return len(ids)


def held_fields(store: Store, sample_id: int) -> list[sqlite3.Row]:
    """Fields held out of the counts as a repeated view, waiting for a decision."""
    return store.connect().execute(f"SELECT * FROM fields WHERE id IN ({HELD_FIELDS}) ORDER BY id",
                                   (sample_id,)).fetchall()


def _open_field(tx, sample_id: int, field_id: int) -> sqlite3.Row:
    """A field of an open sample (its stored QC and image), or the operator's reason why not."""
    row = tx.execute("SELECT f.qc_json, f.image_path, s.status FROM fields f JOIN samples s ON s.id = f.sample_id "
                     "WHERE f.id = ? AND f.sample_id = ?", (field_id, sample_id)).fetchone()
    if row is None:
        raise RecordError(f"no field {field_id}")
    if row["status"] != "open":
        raise RecordError("this sample is finished; its cells can no longer be changed")
    return row


def count_repeated_field(store: Store, sample_id: int, field_id: int, user: str) -> None:
    """The operator says a field held as a repeat is a new view: its cells are counted from now on."""
    with store.transaction() as tx:
        row = _open_field(tx, sample_id, field_id)
        data = json.loads(row["qc_json"] or "{}")
        if not data.get("held"):
            raise RecordError("this field is already counted")
        data["held"] = False
        tx.execute("UPDATE fields SET qc_json = ? WHERE id = ?", (json.dumps(data), field_id))
        store.audit(user, "count-repeated-field", f"sample:{sample_id}",
                    {"field": field_id, "repeat_of": data.get("repeat_of")}, conn=tx)


def discard_repeated_field(store: Store, sample_id: int, field_id: int, user: str) -> None:
    """Remove a field held as a repeated view (its cells were never counted), with its images."""
    with store.transaction() as tx:
        row = _open_field(tx, sample_id, field_id)
        if not json.loads(row["qc_json"] or "{}").get("held"):
            raise RecordError("this field is counted: only a repeated view can be discarded")
        files = [row["image_path"]] + [r[0] for r in tx.execute("SELECT crop_path FROM cells WHERE field_id = ?",
                                                                (field_id,))]
        tx.execute("DELETE FROM cells WHERE field_id = ?", (field_id,))
        tx.execute("DELETE FROM fields WHERE id = ?", (field_id,))
        store.audit(user, "discard-repeated-field", f"sample:{sample_id}", {"field": field_id, "files": len(files)},
                    conn=tx)
    store.remove_files(files)


def finish_sample(store: Store, sample_id: int, user: str, rules, verified_by: str = "") -> SampleSummary:
    """The summary is computed inside the write transaction, so it matches the cells it was computed from."""
    with store.transaction() as tx:
        # computed inside the write transaction: no capture can commit between the count and the result
        summary = summary_of(store, sample_id, rules, conn=tx)
        undecided = summary.uncertain
        data = summary.to_dict() | {"undecided": undecided}
        cur = tx.execute("UPDATE samples SET status = 'finished', finished_at = ?, finished_by = ?, verified_by = ?, "
                         "result_json = ? WHERE id = ? AND status = 'open'",
                         (now(), user, verified_by.strip() or None, json.dumps(data), sample_id))
        if cur.rowcount != 1:
            raise RecordError("this sample is already finished")
        from device.records import district

        district.queue_finished(tx, sample_id)  # durable with the finish itself: a power cut cannot split them
        store.audit(user, "finish-sample", f"sample:{sample_id}",
                    {"leukocytes": summary.leukocytes, "target_reached": summary.target_reached,
                     "unreviewed": summary.unreviewed, "undecided": undecided,
                     "flags": [f["message"] for f in summary.flags]}, conn=tx)
    return summary


def reopen_sample(store: Store, sample_id: int, user: str, reason: str) -> None:
    """An administrator re-opens a finished sample to amend it; the previous result stays in the audit log."""
    if not reason.strip():
        raise RecordError("give a reason for re-opening the sample")
    with store.transaction() as tx:
        row = tx.execute("SELECT status, result_json, finished_at, finished_by FROM samples WHERE id = ?",
                         (sample_id,)).fetchone()
        if row is None:
            raise RecordError(f"no sample {sample_id}")
        if row["status"] != "finished":
            raise RecordError("this sample is not finished")
        # an open sample has no finish time nor result (the previous ones are in the audit entry)
        tx.execute("UPDATE samples SET status = 'open', result_json = NULL, finished_at = NULL, finished_by = NULL, "
                   "verified_by = NULL, reopened_at = ?, reopened_by = ?, reopen_reason = ? WHERE id = ?",
                   (now(), user, reason.strip(), sample_id))
        store.audit(user, "reopen-sample", f"sample:{sample_id}",
                    {"reason": reason.strip(), "previous_finish": row["finished_at"], "previous_by": row["finished_by"],
                     "previous_result": json.loads(row["result_json"]) if row["result_json"] else None}, conn=tx)


# The history's filters: a sample with a referral, a review flag, none, too few cells, or still open.
SEARCH_FLAGS = {"refer": "s.result_json LIKE '%\"level\": \"refer\"%'",
                "review": "s.result_json LIKE '%\"level\": \"review\"%'",
                "none": "s.result_json LIKE '%\"flags\": []%'",
                "insufficient": "s.result_json LIKE '%\"level\": \"insufficient\"%'",
                "open": "s.status = 'open'"}


def search_samples(store: Store, text: str = "", date_from: str = "", date_to: str = "", flag: str = "",
                   limit: int = 200) -> list[sqlite3.Row]:
    sql = "SELECT s.*, u.username AS operator FROM samples s LEFT JOIN users u ON u.id = s.operator_id WHERE 1=1"
    args: list = []
    if text:
        sql += " AND (s.sample_code LIKE ? ESCAPE '\\' OR s.patient_name LIKE ? ESCAPE '\\')"
        pat = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        args += [pat, pat]
    if date_from:
        sql += " AND s.created_at >= ?"
        args.append(date_from)
    if date_to:
        sql += " AND s.created_at < date(?, '+1 day')"
        args.append(date_to)
    if flag in SEARCH_FLAGS:
        sql += " AND " + SEARCH_FLAGS[flag]
    sql += " ORDER BY s.id DESC LIMIT ?"
    args.append(int(limit))
    return store.connect().execute(sql, args).fetchall()


def delete_sample(store: Store, sample_id: int, user: str, reason: str = "") -> None:
    sample = get_sample(store, sample_id)
    conn = store.connect()
    files = [r[0] for r in conn.execute("SELECT image_path FROM fields WHERE sample_id = ? UNION "
                                        "SELECT crop_path FROM cells WHERE sample_id = ?", (sample_id, sample_id))]
    def forget() -> None:
        with store.transaction() as tx:
            tx.execute("DELETE FROM samples WHERE id = ?", (sample_id,))
            store.audit(user, "delete-sample", f"sample:{sample_id}",
                        {"sample_code": sample["sample_code"], "reason": reason, "files": len(files)}, conn=tx)

    try:
        forget()
    except StorageFull:
        # a full disk: free the images the administrator asked to delete, then record the deletion
        # (their rows go in the same step; a crash in between leaves rows the start-up check reports)
        store.remove_files(files)
        forget()
    # rows first, files after: a crash in between leaves orphans that the start-up check removes
    store.remove_files(files)


def apply_retention(store: Store, days: int, user: str = "retention") -> list[int]:
    """Delete samples older than ``days`` (0 = keep everything); each deletion is audited."""
    if days <= 0:
        return []
    old = [r[0] for r in store.connect().execute(
        "SELECT id FROM samples WHERE created_at < strftime('%Y-%m-%dT%H:%M:%S', 'now', ?)", (f"-{int(days)} days",))]
    for sid in old:
        delete_sample(store, sid, user, reason=f"older than the {days}-day retention")
    return old


def field_of(store: Store, sample_id: int, field_id: int) -> sqlite3.Row | None:
    return store.connect().execute("SELECT * FROM fields WHERE id = ? AND sample_id = ?",
                                   (field_id, sample_id)).fetchone()


def cell_of(store: Store, cell_id: int) -> sqlite3.Row | None:
    return store.connect().execute("SELECT * FROM cells WHERE id = ?", (cell_id,)).fetchone()


def recent_audit(store: Store, limit: int = 300, before: int | None = None, text: str = "") -> list[sqlite3.Row]:
    """The latest audit entries (older than entry ``before``), optionally those whose action, user, target or
    detail contain ``text``."""
    sql, args = "SELECT * FROM audit WHERE 1=1", []
    if before is not None:
        sql += " AND id < ?"
        args.append(int(before))
    if text:
        pat = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        sql += (" AND (action LIKE ? ESCAPE '\\' OR username LIKE ? ESCAPE '\\' OR target LIKE ? ESCAPE '\\' "
                "OR detail LIKE ? ESCAPE '\\')")
        args += [pat] * 4
    sql += " ORDER BY id DESC LIMIT ?"
    args.append(int(limit))
    return store.connect().execute(sql, args).fetchall()


def last_backup(store: Store) -> sqlite3.Row | None:
    """The latest backup made from the page (audited), for the administrator's reminder."""
    return store.connect().execute("SELECT at, username FROM audit WHERE action IN ('backup-downloaded', 'backup') "
                                   "ORDER BY id DESC LIMIT 1").fetchone()


def last_camera_scale(store: Store, limit: int = 50) -> dict | None:
    """The pixel size last measured from the red cells of a field taken by this box's own camera (never an
    uploaded picture), with its confidence and field: the only reading worth keeping as the configured scale."""
    for row in store.connect().execute("SELECT id, source, captured_at, qc_json FROM fields ORDER BY id DESC LIMIT ?",
                                       (int(limit),)):
        if (row["source"] or "").startswith("upload:"):
            continue
        scale = (json.loads(row["qc_json"] or "{}") or {}).get("scale") or {}
        if scale.get("source") == "red cells" and scale.get("um_per_px"):
            return {**scale, "field_id": row["id"], "captured_at": row["captured_at"]}
    return None
