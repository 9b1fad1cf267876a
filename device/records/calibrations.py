"""Site calibrations on the box: the reviewed cells they are fitted from, and their life like a model install:
proposed (with before/after figures) -> accepted (active) or rejected; an accepted one can be rolled back to
the exact calibration (or none) that was active before it. Files live in ``data_dir/calibrations``; the
database holds each file's checksum, so a file changed on disk is refused when it is loaded."""
from __future__ import annotations

import hashlib
import json
import uuid

import numpy as np

from device.calibration import Calibration, CalibrationFileError, SiteCells, dumps, loads
from device.records.store import Store, now

# A decision counts as "qualified" (may teach the box a blast) when made by a user marked qualified reviewer,
# or (issue 25) by a remote expert; operators' and administrators' decisions teach only non-blast classes.
QUALIFIED_ROLES = ("qualified", "remote-expert")


class CalibrationError(ValueError):
    """A calibration request that cannot be carried out; the message is for the administrator."""


def encode_embedding(emb) -> bytes | None:
    return None if emb is None else np.asarray(emb, np.float16).tobytes()


def decision_role(tx, user_id: int | None) -> str | None:
    """The role a reviewer decides in, recorded with each decision: "qualified" or the account's role."""
    if user_id is None:
        return None
    row = tx.execute("SELECT role, qualified FROM users WHERE id = ?", (user_id,)).fetchone()
    if row is None:
        return None
    return "qualified" if row["qualified"] else row["role"]


def set_qualified(store: Store, user_id: int, qualified: bool, by: str) -> None:
    with store.transaction() as tx:
        if tx.execute("UPDATE users SET qualified = ? WHERE id = ?", (int(bool(qualified)), user_id)).rowcount != 1:
            raise CalibrationError(f"no user {user_id}")
        store.audit(by, "set-qualified-reviewer", f"user:{user_id}", {"qualified": bool(qualified)}, conn=tx)


def reviewed_cells(store: Store, bundle) -> SiteCells:
    """Every cell a reviewer decided, classified by this bundle's model, with its stored embedding."""
    index = {n: i for i, n in enumerate(bundle.labels)}
    # A district expert's label (issue 25) outranks the box's own decision: it is a qualified reviewer's.
    rows = store.connect().execute(
        "SELECT c.embedding, c.model_probabilities, COALESCE(q.label, c.operator_label) AS operator_label, "
        "c.probabilities_json, c.sample_id, CASE WHEN q.label IS NOT NULL THEN 'remote-expert' "
        "ELSE c.reviewer_role END AS reviewer_role FROM cells c "
        "JOIN fields f ON f.id = c.field_id "
        "LEFT JOIN (SELECT cell_id, label FROM qualified_labels WHERE id IN "
        "(SELECT MAX(id) FROM qualified_labels GROUP BY cell_id)) q ON q.cell_id = c.id "
        "WHERE (c.operator_label IS NOT NULL OR q.label IS NOT NULL) AND c.embedding IS NOT NULL "
        "AND f.model_sha256 = ? ORDER BY c.id", (bundle.sha256,)).fetchall()
    rows = [r for r in rows if r["operator_label"] in index]
    d = bundle.ood["means"].shape[1] if bundle.ood is not None else None
    rows = [r for r in rows if d is None or len(r["embedding"]) == 2 * d]
    if not rows:
        return SiteCells(np.zeros((0, d or 0), np.float32), np.zeros(0, int), np.zeros((0, len(index)), np.float32),
                         np.zeros(0, int), np.zeros(0, bool))
    emb = np.stack([np.frombuffer(r["embedding"], np.float16) for r in rows]).astype(np.float32)
    # the bundle's own probabilities (a cell classified under a calibration stored both)
    probs = np.array([np.frombuffer(r["model_probabilities"], np.float16).astype(np.float32)
                      if r["model_probabilities"] is not None and len(r["model_probabilities"]) == 2 * len(index)
                      else [json.loads(r["probabilities_json"]).get(n, 0.0) for n in bundle.labels] for r in rows],
                     np.float32)
    return SiteCells(emb, np.array([index[r["operator_label"]] for r in rows]), probs,
                     np.array([r["sample_id"] for r in rows]), np.array([r["reviewer_role"] in QUALIFIED_ROLES
                                                                          for r in rows]))


def propose(store: Store, cal: Calibration, bundle, user: str) -> int:
    """Keep a fitted calibration as a proposal for the administrator to accept or reject."""
    data = dumps(cal)
    rel = f"calibrations/{uuid.uuid4().hex}.npz"
    store.check_space(len(data))
    store.write_file(rel, data)
    with store.transaction() as tx:
        cur = tx.execute(
            "INSERT INTO calibrations (created_at, created_by, bundle_name, bundle_sha256, status, n_cells, n_samples, "
            "file_path, file_sha256, figures_json) VALUES (?, ?, ?, ?, 'proposed', ?, ?, ?, ?, ?)",
            (cal.created_at, user, bundle.name, bundle.sha256, cal.n_cells, cal.n_samples, rel,
             hashlib.sha256(data).hexdigest(),
             json.dumps({**cal.figures, "false_calls": list(cal.false_calls)})))
        store.audit(user, "calibration-proposed", f"calibration:{cur.lastrowid}",
                    {"cells": cal.n_cells, "samples": cal.n_samples, "bundle": bundle.name}, conn=tx)
        return cur.lastrowid


def audit_refusal(store: Store, user: str, reason: str, bundle) -> None:
    store.audit(user, "calibration-refused", bundle.name, reason)


def get(store: Store, cal_id: int):
    return store.connect().execute("SELECT * FROM calibrations WHERE id = ?", (cal_id,)).fetchone()


def listing(store: Store, limit: int = 20) -> list:
    return store.connect().execute("SELECT * FROM calibrations ORDER BY id DESC LIMIT ?", (limit,)).fetchall()


def active_row(store: Store, bundle_sha256: str):
    return store.connect().execute("SELECT * FROM calibrations WHERE status = 'active' AND bundle_sha256 = ? "
                                   "ORDER BY id DESC LIMIT 1", (bundle_sha256,)).fetchone()


def decide(store: Store, cal_id: int, accept: bool, user: str) -> None:
    """Accept (the proposal becomes active; the active one is retired and remembered for roll-back) or reject."""
    with store.transaction() as tx:
        row = tx.execute("SELECT * FROM calibrations WHERE id = ?", (cal_id,)).fetchone()
        if row is None or row["status"] != "proposed":
            raise CalibrationError("this calibration is not waiting for a decision")
        if not accept:
            tx.execute("UPDATE calibrations SET status = 'rejected', decided_by = ?, decided_at = ? WHERE id = ?",
                       (user, now(), cal_id))
            store.audit(user, "calibration-rejected", f"calibration:{cal_id}", conn=tx)
            return
        prev = tx.execute("SELECT id FROM calibrations WHERE status = 'active' AND bundle_sha256 = ?",
                          (row["bundle_sha256"],)).fetchone()
        if prev is not None:
            tx.execute("UPDATE calibrations SET status = 'retired' WHERE id = ?", (prev["id"],))
        tx.execute("UPDATE calibrations SET status = 'active', previous_id = ?, decided_by = ?, decided_at = ? "
                   "WHERE id = ?", (prev["id"] if prev else None, user, now(), cal_id))
        store.audit(user, "calibration-accepted", f"calibration:{cal_id}",
                    {"previous": prev["id"] if prev else None}, conn=tx)


def rollback(store: Store, bundle_sha256: str, user: str) -> int | None:
    """Retire the active calibration and make the one active before it active again (None: no calibration)."""
    with store.transaction() as tx:
        row = tx.execute("SELECT * FROM calibrations WHERE status = 'active' AND bundle_sha256 = ?",
                         (bundle_sha256,)).fetchone()
        if row is None:
            raise CalibrationError("no calibration is in use for this model")
        tx.execute("UPDATE calibrations SET status = 'retired' WHERE id = ?", (row["id"],))
        if row["previous_id"] is not None:
            tx.execute("UPDATE calibrations SET status = 'active' WHERE id = ?", (row["previous_id"],))
        store.audit(user, "calibration-rolled-back", f"calibration:{row['id']}",
                    {"restored": row["previous_id"]}, conn=tx)
        return row["previous_id"]


def load(store: Store, row, bundle) -> Calibration:
    """The calibration file of a row, checked against the row's checksum and the bundle."""
    try:
        data = store.path(row["file_path"]).read_bytes()
    except (OSError, ValueError) as exc:
        raise CalibrationFileError(f"calibration {row['id']}: its file cannot be read ({exc})") from None
    if hashlib.sha256(data).hexdigest() != row["file_sha256"]:
        raise CalibrationFileError(f"calibration {row['id']}: its file was changed on disk (checksum mismatch)")
    cal = loads(data, bundle)
    cal.record_id = row["id"]
    return cal


def load_active(store: Store, bundle) -> tuple[Calibration | None, str | None]:
    """The active calibration for this bundle, or (None, why it was refused)."""
    row = active_row(store, bundle.sha256)
    if row is None:
        return None, None
    try:
        return load(store, row, bundle), None
    except CalibrationFileError as exc:
        store.audit("system", "calibration-refused", f"calibration:{row['id']}", str(exc))
        return None, f"calibration refused, classifying without it: {exc}"


def calibrations_of(store: Store, sample_id: int) -> list[dict]:
    """The calibrations that classified a sample's fields, with their cells, samples and date."""
    rows = store.connect().execute(
        "SELECT f.calibration_id AS id, COUNT(*) AS n, c.n_cells, c.n_samples, c.created_at FROM fields f "
        "LEFT JOIN calibrations c ON c.id = f.calibration_id WHERE f.sample_id = ? GROUP BY f.calibration_id "
        "ORDER BY MIN(f.id)", (sample_id,)).fetchall()
    return [{"id": r["id"], "fields": r["n"], "cells": r["n_cells"], "samples": r["n_samples"],
             "date": (r["created_at"] or "")[:10]} for r in rows]
