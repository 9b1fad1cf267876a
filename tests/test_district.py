"""The district (issue 25): finished samples leave the box as DICOM, reach a real Orthanc (its own process,
a configuration in a temporary folder, authentication on, DICOMweb plugin, free loopback port) exactly once,
the district page shows them to an expert whose verdict comes back to the box. Real records, real model,
real HTTP; fakes only for districts that misbehave (a tiny HTTP server answering 401/403/413/500/foreign)."""
from __future__ import annotations

import ast
import io
import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from testkit import REPO

BOX_USER, BOX_PW = "box", "box-password-1"
DISTRICT_USER, DISTRICT_PW = "district", "district-password-1"
_analyses: list = []


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    from testkit.orthanc import Orthanc, unavailable

    why = unavailable()
    if why:
        pytest.skip(why)
    o = Orthanc(tmp_path_factory.mktemp("orthanc"), users={BOX_USER: BOX_PW, DISTRICT_USER: DISTRICT_PW}).start()
    yield o
    o.stop()


def _point(cfg, url: str, user: str = BOX_USER, pw: str = BOX_PW) -> None:
    cfg.district.url, cfg.district.username, cfg.district.password = url, user, pw
    cfg.district.retry_base_s, cfg.district.retry_max_s, cfg.district.poll_seconds = 0.5, 5, 1
    cfg.district.timeout_s = 5


class Box:
    """A real box (records, model, PDF) without its camera loop; its sender is stepped by the test."""

    def __init__(self, tmp_path: Path, url: str = ""):
        from device.box.runtime import build_runtime
        from device.config import AppConfig
        from device.district.sender import Sender
        from device.web import create_app

        cfg = AppConfig()
        cfg.storage.data_dir = str(tmp_path / "data")
        cfg.sample.target_cells = 2
        cfg.web.clinic_name = "Clinic Ngong"
        if url:
            _point(cfg, url)
        self.rt = build_runtime(cfg, start=False)
        self.rt.district = Sender(self.rt.store, lambda: self.rt.config)
        self.app = create_app(self.rt)
        self.store = self.rt.store

    def sample(self, code: str = "S-1", fields: int = 2, blasts: int = 0, patient: str = "Amina Wanjiru") -> int:
        from device.records import samples as records
        from device.imageio import read_image

        if not _analyses:
            for p in sorted((REPO / "device/assets/fields").glob("BloodImage_000*.jpg"))[:3]:
                img = read_image(p)
                _analyses.append((img, self.rt.analyzer.analyze(img)))
        sid = records.create_sample(self.store, code, "admin", target=2, patient_name=patient, patient_age="34",
                                    patient_sex="female")
        for i in range(fields):
            img, analysis = _analyses[i % len(_analyses)]
            records.save_field(self.store, sid, img, analysis, "admin", model=self.rt.bundle)
        cells = records.cells_of(self.store, sid)
        for n, c in enumerate(cells):
            records.review_cell(self.store, c["id"], "blast" if n < blasts else "neutrophil", "admin", None)
        return sid

    def finish(self, sid: int) -> None:
        from device.records import samples as records

        records.finish_sample(self.store, sid, "admin", self.rt.config.sample.flags)

    def close(self):
        self.rt.stop()


@pytest.fixture
def box(tmp_path, orthanc):
    b = Box(tmp_path, orthanc.dicomweb)
    yield b
    b.close()


def _row(store, sid):
    from device.records import district as outbox

    return outbox.state_of(store, sid)


def test_a_finished_sample_is_dicom_that_validates_and_reads_back_identical(box, orthanc):
    import highdicom as hd
    import pydicom

    from device.records import samples as records
    from device.district import dicom
    from device.district.export import sample_record
    from device.district.link import Link

    sid = box.sample(fields=2)
    box.finish(sid)
    assert _row(box.store, sid)["state"] == "waiting"  # queued by the finish itself
    box.rt.district.step()
    row = _row(box.store, sid)
    assert row["state"] == "sent", row["error"]
    assert orthanc.rest("/statistics")["CountInstances"] == 4  # 2 fields, the cells' report, the PDF

    rec = sample_record(box.store, sid, 1, "Clinic Ngong", pdf=box.rt.district.make_pdf(sid))
    objs = dicom.sample_objects(rec)
    again = dicom.sample_objects(sample_record(box.store, sid, 1, "Clinic Ngong", pdf=box.rt.district.make_pdf(sid)))
    # deterministic apart from the PDF's own creation time: same UIDs, same fields and report byte for byte
    assert [o.SOPInstanceUID for o in objs] == [o.SOPInstanceUID for o in again]
    assert [dicom.to_bytes(o) for o in objs[:3]] == [dicom.to_bytes(o) for o in again[:3]]
    assert row["study_uid"] == objs[0].StudyInstanceUID
    assert [o.SOPClassUID for o in objs] == [dicom.VL_MICROSCOPIC] * 2 + [dicom.COMPREHENSIVE_SR, dicom.ENCAPSULATED_PDF]

    link = Link(orthanc.dicomweb, BOX_USER, BOX_PW)
    for o in objs:
        back = link.retrieve(o.StudyInstanceUID, o.SeriesInstanceUID, o.SOPInstanceUID)
        assert back.SOPInstanceUID == o.SOPInstanceUID and back.StudyInstanceUID == o.StudyInstanceUID
        if o.SOPClassUID == dicom.VL_MICROSCOPIC:
            assert back.PixelData == o.PixelData  # the box's JPEG, unchanged
            assert back.pixel_array.shape == (o.Rows, o.Columns, 3)
        elif o.SOPClassUID == dicom.COMPREHENSIVE_SR:
            assert back.ContentSequence == o.ContentSequence
            hd.sr.ComprehensiveSR.from_dataset(back)  # highdicom reads it as a valid Comprehensive SR
        else:
            assert back.EncapsulatedDocument.rstrip(b"\0").startswith(b"%PDF")
        # no patient name nor age by default: a pseudonym only
        raw = dicom.to_bytes(back)
        assert b"Amina" not in raw and b"034Y" not in raw
        assert str(back.PatientID).startswith("LKS-") and back.IssuerOfPatientID == rec.box_id

    info = dicom.read_cells_report(objs[2])
    cells = records.cells_of(box.store, sid)
    assert [c["id"] for c in info["cells"]] == [c["id"] for c in cells]
    assert [c["final_label"] for c in info["cells"]] == [records.cell_final(c)[0] for c in cells]
    assert info["models"][0]["LKS-MODEL-SHA"] == box.rt.bundle.sha256
    assert info["sample_code"] == "S-1" and info["box"] == rec.box_id
    field_uids = {str(o.SOPInstanceUID) for o in objs[:2]}
    assert {c["field_uid"] for c in info["cells"]} <= field_uids

    # the patient's name goes out only when Settings says so
    named = dicom.sample_objects(rec, send_patient=True)
    assert str(named[0].PatientName) == "Amina Wanjiru" and named[0].PatientAge == "034Y"

    # a resend (e.g. the box died before marking it sent) adds nothing
    from device.records import district as outbox

    box.store.connect()  # same thread
    with box.store.transaction() as tx:
        tx.execute("UPDATE district_outbox SET state = 'waiting' WHERE sample_id = ?", (sid,))
    box.rt.district.step()
    assert _row(box.store, sid)["state"] == "sent"
    assert orthanc.rest("/statistics")["CountInstances"] == 4
    assert outbox.queue_summary(box.store)["waiting"] == 0


def test_every_object_passes_dciodvfy(box, tmp_path):
    from device.district import dicom
    from device.district.export import sample_record

    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed; scripts/test.sh installs it")
    sid = box.sample(fields=1, blasts=1)
    box.finish(sid)
    rec = sample_record(box.store, sid, 1, "Clinic Ngong", pdf=box.rt.district.make_pdf(sid))
    v = dicom.Verdict("blasts confirmed", "Dr A. Otieno", "expert", "", "2026-12-06T10:00:00+00:00",
                      {rec.cells[0]["id"]: "blast"})
    objs = dicom.sample_objects(rec)
    objs.append(dicom.verdict_object(objs[-2], v))
    for o in objs:
        path = tmp_path / f"{o.SeriesNumber}-{o.InstanceNumber}.dcm"
        path.write_bytes(dicom.to_bytes(o))
        out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        errors = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, (o.SOPClassUID.name, errors)


def test_a_large_frame_is_sent_as_its_stored_copy_with_regions_in_its_pixels(tmp_path):
    import numpy as np

    from device.records import samples as records
    from device.district import dicom
    from device.district.export import sample_record
    from device.imageio import read_image

    b = Box(tmp_path)
    try:
        small = read_image(sorted((REPO / "device/assets/fields").glob("BloodImage_000*.jpg"))[0])
        big = np.ascontiguousarray(np.repeat(np.repeat(small, 3, axis=0), 3, axis=1))  # 1920 x 1440 > stored 1600
        sid = records.create_sample(b.store, "BIG-1", "admin", target=2)
        records.save_field(b.store, sid, big, b.rt.analyzer.analyze(big), "admin", model=b.rt.bundle)
        b.finish(sid)
        frame = records.fields_of(b.store, sid)[0]
        rec = sample_record(b.store, sid, 1, "Clinic")
        img = dicom.sample_objects(rec)[0]
        assert (img.Columns, img.Rows) == (1600, 1200) and frame["width"] == 1920
        assert rec.cells
        k = 1600 / 1920
        for c, row in zip(rec.cells, records.cells_of(b.store, sid)):
            assert c["box"] == tuple(round(v * k) for v in (row["x1"], row["y1"], row["x2"], row["y2"]))
            assert 0 <= c["box"][0] < c["box"][2] <= img.Columns and 0 <= c["box"][1] < c["box"][3] <= img.Rows
        scale = json.loads(frame["qc_json"])["scale"]["um_per_px"]
        assert float(img.PixelSpacing[0]) == pytest.approx(scale / k / 1000, rel=1e-6)
    finally:
        b.close()


def test_finish_and_queue_are_one_transaction(tmp_path, monkeypatch):
    from device.records import samples as records
    from device.records import district as outbox

    b = Box(tmp_path)
    try:
        sid = b.sample(fields=1)

        def broken(tx, sample_id):
            raise RuntimeError("power cut between the finish and the queue")

        monkeypatch.setattr(outbox, "queue_finished", broken)
        with pytest.raises(RuntimeError):
            b.finish(sid)
        assert records.get_sample(b.store, sid)["status"] == "open" and _row(b.store, sid) is None
        monkeypatch.undo()
        b.finish(sid)
        assert _row(b.store, sid)["revision"] == 1
        # re-open and amend: a new revision is queued, the unsent one is retired (the district gets the amended one)
        records.reopen_sample(b.store, sid, "admin", "wrong class")
        b.finish(sid)
        rows = {r["revision"]: r["state"] for r in b.store.connect().execute(
            "SELECT revision, state FROM district_outbox WHERE sample_id = ?", (sid,))}
        assert rows == {1: "superseded", 2: "waiting"}
        # no district set up: nothing is sent, the page says so
        assert b.rt.district.step() > 0 and _row(b.store, sid)["state"] == "waiting"
        client = b.app.test_client()
        _setup(client)
        html = client.get(f"/samples/{sid}").get_data(as_text=True)
        assert "no district is set up" in html
    finally:
        b.close()


def test_an_amended_sample_is_sent_again_as_a_new_revision(box, orthanc):
    from device.records import samples as records

    before = orthanc.rest("/statistics")["CountInstances"]
    sid = box.sample(code="AMEND-1", fields=1)
    box.finish(sid)
    box.rt.district.step()
    records.reopen_sample(box.store, sid, "admin", "a blast missed")
    box.finish(sid)
    box.rt.district.step()
    row = _row(box.store, sid)
    assert row["revision"] == 2 and row["state"] == "sent"
    # one field (same UID, kept once), two reports and two PDFs
    assert orthanc.rest("/statistics")["CountInstances"] - before == 5


class FakeDistrict:
    """A district that answers what the test says: a status code, or a STOW reply naming a foreign object."""

    def __init__(self):
        self.status, self.body, self.ctype = 500, b"{}", "application/dicom+json"
        self.requests = 0
        fake = self

        class H(BaseHTTPRequestHandler):
            def _answer(self):
                fake.requests += 1
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                self.send_response(fake.status)
                self.send_header("Content-Type", fake.ctype)
                self.send_header("Content-Length", str(len(fake.body)))
                self.end_headers()
                self.wfile.write(fake.body)

            do_GET = do_POST = _answer

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_a_misbehaving_district_loses_nothing_and_causes_no_retry_storm(tmp_path, orthanc):
    from testkit import free_port

    fake = FakeDistrict()
    b = Box(tmp_path, fake.url)
    try:
        sid = b.sample(fields=1)
        b.finish(sid)
        foreign = json.dumps({"00081199": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": ["2.25.1234"]}}]}}).encode()
        cases = [(401, b"", "user name or password (401)", "error"), (403, b"", "(403)", "error"),
                 (413, b"", "too large (413)", "error"), (500, b"", "server failed (500)", "error"),
                 (200, foreign, "did not send", "error"), (200, b"not json", "not DICOM JSON", "error")]
        attempts = 0
        for status, body, words, state in cases:
            fake.status, fake.body = status, body
            with b.store.transaction() as tx:  # due now, whatever the back-off said
                tx.execute("UPDATE district_outbox SET next_try_at = '' WHERE sample_id = ?", (sid,))
            b.rt.district.step()
            row = _row(b.store, sid)
            attempts += 1
            assert row["state"] == state and words in row["error"], (status, row["error"])
            assert row["attempts"] == attempts
            # backing off: stepping again at once does not call the district again
            n = fake.requests
            b.rt.district.step()
            assert fake.requests == n and _row(b.store, sid)["attempts"] == attempts
            html = _result_page(b, sid)
            assert "Not sent:" in html and words.split(" (")[0][:20] in html
        # TLS: an https address whose server speaks plain HTTP
        b.rt.config.district.url = fake.url.replace("http://", "https://")
        _due_now(b, sid)
        b.rt.district.step()
        assert "TLS" in _row(b.store, sid)["error"]
        # no link at all: "waiting for a link", not an error
        b.rt.config.district.url = f"http://127.0.0.1:{free_port()}/dicom-web"
        _due_now(b, sid)
        b.rt.district.step()
        row = _row(b.store, sid)
        assert row["state"] == "waiting" and "no link" in row["error"]
        assert "Waiting for a link to the district since" in _result_page(b, sid)
        health = b.rt.health()[1]["district"]
        assert health["waiting"] == 1 and "no link" in health["last_error"]
        # the thread itself keeps going under refusals, at the back-off's pace
        fake.status, fake.body = 500, b""
        b.rt.config.district.url = fake.url
        _due_now(b, sid)
        n = fake.requests
        b.rt.district.start()
        time.sleep(2.0)
        assert b.rt.district.thread.is_alive()
        assert fake.requests - n <= 4  # 0.5 s doubling: about 2-3 posts (and a poll) in 2 s, not hundreds
        b.rt.district.stop()
        # the district comes back: the sample arrives, nothing was lost
        _point(b.rt.config, orthanc.dicomweb)
        _due_now(b, sid)
        b.rt.district.step()
        assert _row(b.store, sid)["state"] == "sent"
        assert "Sent to the district at" in _result_page(b, sid)
    finally:
        b.close()
        fake.close()


def _due_now(b, sid):
    with b.store.transaction() as tx:
        tx.execute("UPDATE district_outbox SET next_try_at = '' WHERE sample_id = ?", (sid,))


def _setup(client):
    from testkit.web import csrf_of

    page = client.get("/setup")
    if page.status_code == 200:
        client.post("/setup", data={"csrf_token": csrf_of(page.get_data(as_text=True)), "username": "admin",
                                    "password": "correct-horse-9", "confirm": "correct-horse-9"})


def _result_page(b, sid) -> str:
    client = b.app.test_client()
    _setup(client)
    if client.get("/").status_code == 302:
        from testkit.web import csrf_of

        page = client.get("/login")
        client.post("/login", data={"csrf_token": csrf_of(page.get_data(as_text=True)), "username": "admin",
                                    "password": "correct-horse-9"})
    r = client.get(f"/samples/{sid}")
    assert r.status_code == 200
    return r.get_data(as_text=True)


def test_a_verdict_for_another_box_or_study_is_refused_once(box, orthanc):
    from device.district import dicom
    from device.district.export import sample_record
    from device.district.link import Link
    from device.records import district as outbox

    sid = box.sample(code="FOREIGN-1", fields=1)
    box.finish(sid)
    box.rt.district.step()
    rec = sample_record(box.store, sid, 1, "Clinic Ngong")
    sr = dicom.sample_objects(rec)[-1]
    cells = {rec.cells[0]["id"]: "blast"}
    link = Link(orthanc.dicomweb, DISTRICT_USER, DISTRICT_PW)
    # an object filed under this box's station but written for another box
    other = dicom.verdict_object(sr, dicom.Verdict("blasts confirmed", "Dr X", "expert", "", "2026-12-06T09:00:00",
                                                   cells))
    other.ContentSequence[0].TextValue = "box-someoneelse"
    # and one naming cells this sample does not have
    bad_cells = dicom.verdict_object(sr, dicom.Verdict("blasts confirmed", "Dr Y", "expert", "",
                                                       "2026-12-06T09:05:00", {999999: "blast"}))
    for o in (other, bad_cells):
        link.store([dicom.to_bytes(o)], [str(o.SOPInstanceUID)])
    assert box.rt.district.poll_verdicts(Link.from_config(box.rt.config.district)) == 0
    assert box.rt.district.poll_verdicts(Link.from_config(box.rt.config.district)) == 0
    assert outbox.verdicts_of(box.store, sid) == []
    refusals = [r for r in box.store.connect().execute("SELECT detail FROM audit WHERE action = ?",
                                                       ("district-verdict-refused",))]
    assert len(refusals) == 2  # once each, not once per poll
    reasons = " ".join(r[0] for r in refusals)
    assert "another box" in reasons and "does not have" in reasons


def _district_app(orthanc, tmp_path):
    from device.district.link import Link
    from district.app import create_app

    app = create_app(Link(orthanc.dicomweb, DISTRICT_USER, DISTRICT_PW), tmp_path / "district")
    server, base = _serve(app)
    return app, server, base


def _csrf(html):
    from testkit.web import csrf_of

    return csrf_of(html)


def test_the_whole_loop_box_district_expert_verdict_back(box, orthanc, tmp_path):
    import requests
    from pypdf import PdfReader

    from device.records import district as outbox

    sid = box.sample(code="REF-1", fields=2, blasts=2)
    box.finish(sid)
    quiet = box.sample(code="QUIET-1", fields=1, blasts=0)
    box.finish(quiet)
    box.rt.district.step()
    assert _row(box.store, sid)["state"] == "sent"
    result = json.loads(box.store.connect().execute("SELECT result_json FROM samples WHERE id = ?", (sid,))
                        .fetchone()[0])
    assert any(f["level"] == "refer" for f in result["flags"])

    app, server, base = _district_app(orthanc, tmp_path)
    try:
        admin = requests.Session()
        page = admin.get(base + "/")  # first start: set-up
        assert "/setup" in page.url
        admin.post(base + "/setup", data={"csrf_token": _csrf(page.text), "username": "chief",
                                          "password": "district-admin-1", "full_name": "Chief"})
        page = admin.get(base + "/users")
        r = admin.post(base + "/users", data={"csrf_token": _csrf(page.text), "username": "otieno",
                                              "password": "expert-pass-1", "role": "expert",
                                              "full_name": "Dr A. Otieno"})
        assert "otieno" in r.text
        expert = requests.Session()
        page = expert.get(base + "/login")
        expert.post(base + "/login", data={"csrf_token": _csrf(page.text), "username": "otieno",
                                           "password": "expert-pass-1"})
        listing = expert.get(base + "/").text
        assert listing.index("REF-1") < listing.index("QUIET-1")  # referred first
        box_id = outbox.box_identity(box.store)
        assert "REF-1" in expert.get(base + "/", params={"box": box_id}).text
        assert "REF-1" not in expert.get(base + "/", params={"box": "box-000000000000"}).text
        assert "REF-1" not in expert.get(base + "/", params={"flag": "none"}).text
        assert "REF-1" not in expert.get(base + "/", params={"from": "2099-01-01"}).text
        study = _row(box.store, sid)["study_uid"]
        page = expert.get(f"{base}/samples/{study}")
        assert page.status_code == 200 and "Blast" in page.text
        blasts = [c["id"] for c in box.store.connect().execute(
            "SELECT id FROM cells WHERE sample_id = ? AND operator_label = 'blast' ORDER BY id", (sid,))]
        assert len(blasts) == 2
        img = expert.get(f"{base}/samples/{study}/cells/{blasts[0]}.jpg")
        assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"
        # an administrator is not an expert: cannot sign
        admin_page = admin.get(f"{base}/samples/{study}")
        assert "Only an expert account signs" in admin_page.text
        r = admin.post(f"{base}/samples/{study}/sign", data={"csrf_token": _csrf(admin_page.text),
                                                             "verdict": "blasts confirmed"})
        assert r.status_code == 403
        form = {"csrf_token": _csrf(page.text), "verdict": "blasts confirmed", "note": "typical myeloblasts"}
        form |= {f"cell-{cid}": "blast" for cid in blasts}
        r = expert.post(f"{base}/samples/{study}/sign", data=form)
        assert r.status_code == 200 and "Verdict signed" in r.text
        assert "blasts confirmed (Dr A. Otieno)" in expert.get(base + "/").text
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=5)  # a one-socket server's close() leaves its workers

    # the fleet teaches the next model: the confirmed cells as a training set leukoscope train reads
    from PIL import Image

    from device.district.link import Link
    from district.catalogue import Catalogue
    from district.export import export_confirmed
    from training.datasets import read_district, read_source

    done = export_confirmed(Catalogue(Link(orthanc.dicomweb, DISTRICT_USER, DISTRICT_PW)), tmp_path / "export")
    ds = read_source("district", tmp_path / "export")  # the Orthanc is shared by this module's tests: every box's
    box_id = outbox.box_identity(box.store)
    mine = [r for r in ds.records if r.dataset == f"district-{box_id}"]
    assert ds.info.subject_ids and done["cells"] == len(ds.records) and len(mine) == 2
    assert {(r.label, r.subject) for r in mine} == {("blast", f"{box_id}/{sid}")}
    um = mine[0].um_per_px
    assert um and Image.open(mine[0].path).width == pytest.approx(28 / um, abs=2)  # the box's 28 um framing
    (tmp_path / "export" / "manifest.csv").write_text("path,label,box\nnope.jpg,blast,b1\n")
    with pytest.raises(ValueError, match="not found"):
        read_district(tmp_path / "export")

    # the box polls and stores the verdict, its cell labels as a qualified reviewer's, and audits it
    assert box.rt.district.poll_verdicts(__import__("device.district.link", fromlist=["Link"]).Link.from_config(
        box.rt.config.district)) == 1
    v = outbox.verdicts_of(box.store, sid)
    assert len(v) == 1 and v[0]["verdict"] == "blasts confirmed" and v[0]["blasts_confirmed"] == 2
    labels = outbox.qualified_labels(box.store, sid)
    assert sorted(q["cell_id"] for q in labels) == blasts
    assert {(q["label"], q["reviewer"], q["role"]) for q in labels} == {("blast", "Dr A. Otieno", "expert")}
    # ... and the box's site calibration counts them as confirmed blasts of a qualified reviewer (issue 23)
    from device.records.calibrations import reviewed_cells

    site = reviewed_cells(box.store, box.rt.bundle)
    blast = box.rt.bundle.labels.index("blast")
    assert int(((site.y == blast) & site.qualified).sum()) >= 2
    assert box.store.connect().execute("SELECT COUNT(*) FROM audit WHERE action = 'district-verdict'").fetchone()[0] == 1
    html = _result_page(box, sid)
    assert "Reviewed at the district by Dr A. Otieno (expert)" in html and "2 blasts confirmed" in html
    client = box.app.test_client()
    _setup(client)
    from testkit.web import csrf_of

    page = client.get("/login")
    client.post("/login", data={"csrf_token": csrf_of(page.get_data(as_text=True)), "username": "admin",
                                "password": "correct-horse-9"})
    pdf = client.get(f"/samples/{sid}/report.pdf")
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.data)).pages)
    assert "Reviewed at the district by Dr A. Otieno" in text and "2 blasts confirmed" in text


def test_box_settings_take_the_district_and_test_the_link(tmp_path, orthanc):
    from testkit.web import csrf_of

    b = Box(tmp_path)
    try:
        client = b.app.test_client()
        _setup(client)
        page = client.get("/settings")
        html = page.get_data(as_text=True)
        assert "Test the link" in html and 'id="district-form"' in html
        token = csrf_of(html)
        r = client.post("/settings/district", data={"csrf_token": token, "url": orthanc.dicomweb,
                                                    "username": BOX_USER, "password": BOX_PW})
        assert r.status_code == 302
        assert b.rt.config.district.url == orthanc.dicomweb and b.rt.config.district.password == BOX_PW
        saved = (tmp_path / "data" / "settings.toml").read_text()
        assert "[district]" in saved
        r = client.post("/settings/district/test", data={"csrf_token": token}, follow_redirects=True)
        assert "The link to the district works" in r.get_data(as_text=True)
        # a blank password keeps the stored one; a wrong one is named by the test
        client.post("/settings/district", data={"csrf_token": token, "url": orthanc.dicomweb, "username": BOX_USER})
        assert b.rt.config.district.password == BOX_PW
        client.post("/settings/district", data={"csrf_token": token, "url": orthanc.dicomweb, "username": BOX_USER,
                                                "password": "wrong-password"})
        r = client.post("/settings/district/test", data={"csrf_token": token}, follow_redirects=True)
        assert "does not work" in r.get_data(as_text=True) and "401" in r.get_data(as_text=True)
        # the password is never shown nor audited
        details = " ".join(r[0] for r in b.store.connect().execute("SELECT detail FROM audit"))
        assert BOX_PW not in details and "wrong-password" not in details and '"password": "changed"' in details
        assert BOX_PW not in client.get("/settings").get_data(as_text=True)
        health = client.get("/health").get_json()
        assert "district" in health and health["district"]["configured"] is True
    finally:
        b.close()


def test_the_district_package_imports_nothing_of_capture_or_analysis():
    banned = ("device.camera", "device.analysis", "device.box", "device.records", "device.web", "training", "convert")
    for path in sorted((REPO / "district").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not [n for n in names if n.startswith(banned)], (path, names)
    out = subprocess.run([sys.executable, "-c", "import sys, district.app, district.cli; "
                          "print(sorted(m for m in sys.modules if m.startswith(('device.analysis', 'device.camera', "
                          "'device.box', 'device.records'))))"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:] + out.stdout
    out = subprocess.run([sys.executable, "-m", "device.cli", "district", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and "--orthanc" in out.stdout, out.stderr[-2000:]


def test_bench_district_fast_nothing_lost_nothing_duplicated(orthanc):
    out = subprocess.run([sys.executable, "-m", "bench.district", "--fast"], cwd=REPO, capture_output=True, text=True,
                         timeout=600)
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT "), out.stdout[-2000:] + out.stderr[-2000:]
    r = json.loads(last[len("RESULT "):])
    assert out.returncode == 0, r
    assert r["samples"] >= 12 and r["in_orthanc"] == 18 and r["lost"] == 0 and r["duplicated"] == 0
    assert r["link_drops"] >= 1 and r["box_kills"] >= 1
    assert r["samples_per_minute"] > 0 and r["bytes_per_sample"] > 10_000 and r["queue_drain_s"] is not None


def _serve(app):
    import waitress

    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4)

    def run():
        try:
            server.run()
        except OSError:  # closed from the test's thread: the loop wakes on a closed socket
            pass

    threading.Thread(target=run, daemon=True).start()
    return server, f"http://127.0.0.1:{server.effective_port}"


@pytest.mark.browser
def test_the_loop_in_a_real_browser(box, orthanc, tmp_path):
    """Box sends a referred sample -> the expert, in Chromium, opens it on the district page, confirms two blasts
    and signs -> the box's result page (in Chromium) shows the verdict; its calibration labels are stored."""
    from playwright.sync_api import expect, sync_playwright

    from device.district.link import Link
    from device.records import district as outbox
    from district.accounts import Accounts

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.fail("Debian's chromium is not installed: scripts/test.sh installs it (apt-get install chromium)")
    sid = box.sample(code="BROWSER-1", fields=2, blasts=2)
    box.finish(sid)
    box.rt.district.step()
    study = _row(box.store, sid)["study_uid"]
    blasts = [r[0] for r in box.store.connect().execute(
        "SELECT id FROM cells WHERE sample_id = ? AND operator_label = 'blast' ORDER BY id", (sid,))]
    app, dserver, dbase = _district_app(orthanc, tmp_path)
    Accounts(tmp_path / "district" / "accounts.db").create("otieno", "expert-pass-1", "expert", "Dr A. Otieno")
    bserver, bbase = _serve(box.app)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = b.new_page()
            page.goto(dbase + "/login")
            page.fill("input[name=username]", "otieno")
            page.fill("input[name=password]", "expert-pass-1")
            page.click("button[type=submit]")
            expect(page.locator("#samples tr.sample").first).to_contain_text("BROWSER-1")
            page.click("text=BROWSER-1")
            for cid in blasts:
                page.select_option(f"select[name=cell-{cid}]", "blast")
            page.check("input[name=verdict][value='blasts confirmed']")
            page.click("#sign")
            expect(page.locator(".verdict")).to_contain_text("blasts confirmed")
            assert box.rt.district.poll_verdicts(Link.from_config(box.rt.config.district)) == 1
            page = b.new_page()
            page.goto(bbase + "/setup")
            page.fill("input[name=username]", "admin")
            page.fill("input[name=password]", "correct-horse-9")
            page.fill("input[name=confirm]", "correct-horse-9")
            page.click("button[type=submit]")
            page.goto(f"{bbase}/samples/{sid}")
            expect(page.locator("#district-state")).to_contain_text("Sent to the district at")
            expect(page.locator(".district-verdict")).to_contain_text(
                "Reviewed at the district by Dr A. Otieno (expert)")
            expect(page.locator(".district-verdict")).to_contain_text("2 blasts confirmed")
            b.close()
    finally:
        for srv in (dserver, bserver):
            srv.close()
            srv.task_dispatcher.shutdown(timeout=5)  # a one-socket server's close() leaves its workers
    confirmed = [q for q in outbox.qualified_labels(box.store, sid) if q["label"] == "blast"]
    assert sorted(q["cell_id"] for q in confirmed) == blasts and study


def test_leukoscope_district_starts_against_the_loopback_orthanc(orthanc, tmp_path):
    import os

    import requests

    from testkit import free_port

    port = free_port()
    env = dict(os.environ, LEUKOSCOPE_ORTHANC=orthanc.dicomweb, LEUKOSCOPE_ORTHANC_USER=DISTRICT_USER,
               LEUKOSCOPE_ORTHANC_PASSWORD=DISTRICT_PW)
    proc = subprocess.Popen([sys.executable, "-m", "device.cli", "district", "--port", str(port), "--data-dir",
                             str(tmp_path / "d")], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "Leukoscope district on" in line and "answers" in line, line
        r = requests.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert r.status_code == 200 and "/setup" in r.url  # first start: the administrator's account
    finally:
        proc.terminate()
        proc.wait(20)
