from __future__ import annotations

import sqlite3

import pytest

from device.records.counts import CountedCell, FlagRule, summarize, wilson_interval
from device.records.store import MIGRATIONS, Store


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(20, 100)
    assert lo == pytest.approx(0.1333, abs=1e-3) and hi == pytest.approx(0.2888, abs=1e-3)
    assert wilson_interval(0, 50)[0] == 0.0 and wilson_interval(0, 50)[1] == pytest.approx(0.0713, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_counts_flags_and_review_override():
    cells = ([CountedCell("lymphocyte", "normal")] * 70 + [CountedCell("pre-b", "malignant")] * 25
             + [CountedCell("platelet", "non-leukocyte")] * 3 + [CountedCell("lymphocyte", "normal", "low-confidence")] * 2)
    s = summarize(cells, target=100)
    assert s.leukocytes == 95 and s.malignant == 25 and s.uncertain == 2
    assert s.by_category["non-leukocyte"] == 3
    assert s.malignant_fraction == pytest.approx(25 / 95)
    # only classified leukocytes count toward the target; the 2 uncertain cells are shown beside it
    assert s.seen == 95 and s.progress == pytest.approx(0.95) and not s.target_reached
    assert s.flags[0] == {"level": "insufficient", "message": "Insufficient: 95 of 100 cells",
                          "category": "insufficient", "count": 95, "target": 100}
    assert s.unreviewed == 100
    levels = {f["level"]: f["message"] for f in s.flags}
    assert "refer" in levels and "leukaemia" in levels["refer"]
    assert "screening aid" in s.disclaimer.lower()
    # a reviewer resolves the uncertain cells and one blast turns out to be a lymphocyte
    reviewed = cells[:94] + [CountedCell("pre-b", "malignant", None, "lymphocyte")] + cells[95:98] + [
        CountedCell("lymphocyte", "normal", "low-confidence", "lymphocyte")] * 2
    s2 = summarize(reviewed)
    assert s2.uncertain == 0 and s2.malignant == 24 and s2.leukocytes == 97 and s2.unreviewed == 97


def test_an_empty_or_short_sample_is_insufficient_never_no_flag():
    s = summarize([], target=100)
    assert [f["level"] for f in s.flags] == ["insufficient"] and s.flags[0]["message"] == "Insufficient: 0 of 100 cells"
    assert s.progress == 0 and not s.target_reached
    s = summarize([CountedCell("neutrophil", "normal")] * 99 + [CountedCell("neutrophil", "normal", "low-confidence")],
                  target=100)
    assert s.seen == 99 and s.uncertain == 1 and s.flags[0]["level"] == "insufficient"
    s = summarize([CountedCell("neutrophil", "normal")] * 100, target=100)
    assert s.target_reached and s.progress == 1.0 and s.flags == []


def test_one_final_label_rule():
    from device.records.counts import final_label

    assert final_label("platelet", "low-confidence", None) == ("uncertain", "uncertain")
    assert final_label("platelet", "low-confidence", "neutrophil") == ("neutrophil", "normal")
    assert final_label("ig", None, None) == ("ig", "atypical")
    assert CountedCell("platelet", "non-leukocyte", "unfamiliar").final == ("uncertain", "uncertain")


def test_no_flags_for_a_normal_sample_and_custom_rules():
    s = summarize([CountedCell("neutrophil", "normal")] * 10, target=10)
    assert s.flags == [] and s.malignant_fraction == 0.0
    rule = FlagRule("normal", "many normals", "review", min_count=5)
    assert summarize([CountedCell("neutrophil", "normal")] * 10, target=10, rules=[rule]).flags[0]["message"] == "many normals"
    with pytest.raises(ValueError):
        FlagRule("bogus", "x", min_count=1)


def test_store_schema_wal_and_foreign_keys(tmp_path):
    store = Store(tmp_path)
    conn = store.connect()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    from device.records.store import MIGRATIONS

    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    with pytest.raises(sqlite3.IntegrityError):
        with store.transaction() as tx:
            tx.execute("INSERT INTO fields (sample_id, image_path, captured_at, width, height, qc_ok, qc_message, "
                       "qc_json) VALUES (999, 'x', 'now', 1, 1, 1, 'ok', '{}')")
    store.close()
    assert Store(tmp_path).migrate() == len(MIGRATIONS)  # re-opening migrates nothing


def test_consistency_check_quarantines_orphans_and_keeps_dangling_rows(tmp_path):
    from device.records import samples as records

    store = Store(tmp_path)
    sid = records.create_sample(store, "S1", "tester")
    kept = store.write_file(store.new_name(sid, ".jpg"), b"field")
    gone = store.new_name(sid, ".jpg")
    with store.transaction() as tx:
        for path in (kept, gone):
            tx.execute("INSERT INTO fields (sample_id, image_path, captured_at, width, height, qc_ok, qc_message, "
                       "qc_json) VALUES (?, ?, 'now', 1, 1, 1, 'ok', '{}')", (sid, path))
    orphan = store.write_file(store.new_name(sid, ".jpg"), b"written but never committed")
    (tmp_path / "images" / str(sid) / ".abc.jpg.123.tmp").write_bytes(b"half")
    report = store.consistency_check()
    assert report.integrity == "ok"
    assert report.orphans_quarantined == [orphan]
    assert len(report.temp_files_removed) == 1
    assert [r.split(":")[2] for r in report.rows_without_files] == [gone]
    assert not (tmp_path / orphan).exists() and (tmp_path / kept).exists()
    # the orphan is moved, never deleted: a restored database may still claim it
    quarantined = list((tmp_path / "quarantine").rglob("*.jpg"))
    assert [p.read_bytes() for p in quarantined] == [b"written but never committed"]
    assert quarantined[0].as_posix().endswith(orphan)
    assert store.connect().execute("SELECT COUNT(*) FROM fields").fetchone()[0] == 2  # rows are kept
    audit = store.connect().execute("SELECT detail FROM audit WHERE action = 'startup-repair'").fetchall()
    assert len(audit) == 1 and orphan in audit[0][0]
    assert store.consistency_check().repaired == 0  # a second run finds nothing new to move
