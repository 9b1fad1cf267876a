"""The district's rows: the box's identity, the outgoing queue, verdicts received and the experts' cell labels.

The queue row is written in the finish's own transaction (``queue_finished``), so a finished sample is either
queued or not finished: a power cut cannot leave one without the other. A re-finish after an amendment queues
a new revision and retires the older ones still waiting (the district gets the amended result, not both).
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone

from device.records.store import Store, now

BOX_ID_KEY = "district.box_id"


def now_ms() -> str:
    """Retry times to the millisecond (a fast retry must not wait for the next whole second)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def box_identity(store: Store) -> str:
    """This box's identity for the district: created once (random), kept in its own database, so a restored
    backup keeps it and two boxes never share it."""
    conn = store.connect()
    row = conn.execute("SELECT value FROM settings WHERE key = ?", (BOX_ID_KEY,)).fetchone()
    if row:
        return row[0]
    with store.transaction() as tx:
        tx.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)",
                   (BOX_ID_KEY, "box-" + uuid.uuid4().hex[:12]))
        return tx.execute("SELECT value FROM settings WHERE key = ?", (BOX_ID_KEY,)).fetchone()[0]


def queue_finished(tx: sqlite3.Connection, sample_id: int) -> int:
    """Inside the finish's transaction: queue revision N+1 of the sample; older waiting revisions are retired."""
    rev = tx.execute("SELECT COALESCE(MAX(revision), 0) + 1 FROM district_outbox WHERE sample_id = ?",
                     (sample_id,)).fetchone()[0]
    tx.execute("UPDATE district_outbox SET state = 'superseded' WHERE sample_id = ? AND state IN ('waiting', 'error')",
               (sample_id,))
    at = now()
    tx.execute("INSERT INTO district_outbox (sample_id, revision, queued_at, next_try_at) VALUES (?, ?, ?, ?)",
               (sample_id, rev, at, at))
    return rev


def due(store: Store, limit: int = 10, at: str | None = None) -> list[sqlite3.Row]:
    """Queue rows whose next try has come, oldest first."""
    return store.connect().execute(
        "SELECT o.*, s.sample_code FROM district_outbox o JOIN samples s ON s.id = o.sample_id "
        "WHERE o.state IN ('waiting', 'error') AND o.next_try_at <= ? ORDER BY o.id LIMIT ?",
        (at or now_ms(), int(limit))).fetchall()


def next_due_at(store: Store) -> str | None:
    row = store.connect().execute("SELECT MIN(next_try_at) FROM district_outbox WHERE state IN ('waiting', 'error')"
                                  ).fetchone()
    return row[0] if row else None


def mark_sent(store: Store, outbox_id: int, nbytes: int, study_uid: str) -> None:
    with store.transaction() as tx:
        row = tx.execute("SELECT sample_id, revision FROM district_outbox WHERE id = ?", (outbox_id,)).fetchone()
        if row is None:
            return  # the sample was deleted meanwhile: nothing to record
        tx.execute("UPDATE district_outbox SET state = 'sent', sent_at = ?, last_try_at = ?, attempts = attempts + 1, "
                   "error = NULL, bytes = ?, study_uid = ? WHERE id = ?", (now(), now(), nbytes, study_uid, outbox_id))
        store.audit("district", "district-sent", f"sample:{row['sample_id']}",
                    {"revision": row["revision"], "bytes": nbytes, "study": study_uid}, conn=tx)


def mark_failed(store: Store, outbox_id: int, error: str, retry_in_s: float, link_down: bool) -> None:
    """``link_down``: no answer at all (stays "waiting for a link"); else the district refused it ("error")."""
    nxt = (datetime.now(timezone.utc) + timedelta(seconds=retry_in_s)).isoformat(timespec="milliseconds")
    with store.transaction() as tx:
        tx.execute("UPDATE district_outbox SET state = ?, attempts = attempts + 1, last_try_at = ?, next_try_at = ?, "
                   "error = ? WHERE id = ? AND state IN ('waiting', 'error')",
                   ("waiting" if link_down else "error", now(), nxt, error[:500], outbox_id))


def retry_now(store: Store) -> int:
    """Every waiting or refused row is due now (after "Test the link" or a settings change)."""
    with store.transaction() as tx:
        return tx.execute("UPDATE district_outbox SET next_try_at = ? WHERE state IN ('waiting', 'error')",
                          (now_ms(),)).rowcount


def state_of(store: Store, sample_id: int) -> sqlite3.Row | None:
    """The sample's latest queue row (its newest revision)."""
    return store.connect().execute("SELECT * FROM district_outbox WHERE sample_id = ? ORDER BY revision DESC LIMIT 1",
                                   (sample_id,)).fetchone()


def queue_summary(store: Store) -> dict:
    conn = store.connect()
    counts = {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM district_outbox GROUP BY state")}
    oldest = conn.execute("SELECT MIN(queued_at) FROM district_outbox WHERE state IN ('waiting', 'error')").fetchone()[0]
    last_error = conn.execute("SELECT error FROM district_outbox WHERE state IN ('waiting', 'error') AND error IS NOT NULL "
                              "ORDER BY last_try_at DESC LIMIT 1").fetchone()
    last_sent = conn.execute("SELECT MAX(sent_at) FROM district_outbox WHERE state = 'sent'").fetchone()[0]
    return {"waiting": counts.get("waiting", 0), "refused": counts.get("error", 0), "sent": counts.get("sent", 0),
            "oldest_waiting": oldest, "last_sent": last_sent, "last_error": last_error[0] if last_error else None}


def sent_studies(store: Store) -> dict[str, int]:
    """Study UID -> sample id of every sample this box has sent (what a verdict may refer to)."""
    return {r[0]: r[1] for r in store.connect().execute(
        "SELECT study_uid, sample_id FROM district_outbox WHERE study_uid IS NOT NULL")}


def known_verdicts(store: Store) -> set[str]:
    return {r[0] for r in store.connect().execute("SELECT sop_uid FROM district_verdicts")}


def save_verdict(store: Store, sample_id: int, sop_uid: str, expert: str, role: str, verdict: str, note: str,
                 signed_at: str, cell_labels: dict[int, str]) -> bool:
    """A verdict from the district and the expert's label of each cell, in one transaction, audited. The labels
    are decisions of a qualified reviewer (who and with which role), kept beside the operator's, never over
    them. Returns False if this verdict was already stored (polling again is harmless)."""
    from device.records.counts import category_of

    with store.transaction() as tx:
        if tx.execute("SELECT 1 FROM district_verdicts WHERE sop_uid = ?", (sop_uid,)).fetchone():
            return False
        cells = {r[0] for r in tx.execute("SELECT id FROM cells WHERE sample_id = ?", (sample_id,))}
        unknown = sorted(set(cell_labels) - cells)
        if unknown:
            raise ValueError(f"the verdict names cells {unknown[:5]} that sample {sample_id} does not have")
        blasts = sum(1 for lbl in cell_labels.values() if category_of(lbl) == "malignant")
        at = now()
        cur = tx.execute("INSERT INTO district_verdicts (sample_id, sop_uid, expert, role, verdict, note, "
                         "blasts_confirmed, signed_at, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (sample_id, sop_uid, expert, role, verdict, note, blasts, signed_at, at))
        vid = cur.lastrowid
        tx.executemany("INSERT INTO qualified_labels (cell_id, sample_id, verdict_id, label, reviewer, role, decided_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(cid, sample_id, vid, lbl, expert, role, signed_at) for cid, lbl in sorted(cell_labels.items())])
        store.audit("district", "district-verdict", f"sample:{sample_id}",
                    {"verdict": verdict, "expert": expert, "role": role, "cells": len(cell_labels),
                     "blasts_confirmed": blasts, "note": note, "object": sop_uid}, conn=tx)
    return True


def verdicts_of(store: Store, sample_id: int) -> list[sqlite3.Row]:
    return store.connect().execute("SELECT * FROM district_verdicts WHERE sample_id = ? ORDER BY signed_at, id",
                                   (sample_id,)).fetchall()


def qualified_labels(store: Store, sample_id: int | None = None) -> list[sqlite3.Row]:
    """The experts' cell labels (who decided, with which role): what site calibration counts as confirmed."""
    sql = ("SELECT q.*, c.label AS model_label, c.probabilities_json FROM qualified_labels q "
           "JOIN cells c ON c.id = q.cell_id")
    args: tuple = ()
    if sample_id is not None:
        sql += " WHERE q.sample_id = ?"
        args = (sample_id,)
    return store.connect().execute(sql + " ORDER BY q.id", args).fetchall()


def audit_refusal(store: Store, what: str, detail: dict) -> None:
    store.audit("district", what, "", json.dumps(detail, sort_keys=True))
