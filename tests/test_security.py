"""Escaping, traversal and limits against the real app: in process, and raw paths over real HTTP."""
from __future__ import annotations

import io
import re

import pytest
from markupsafe import escape

from testkit.web import csrf_of, signed_in

XSS = [
    "<script>alert('x')</script>",
    '"><img src=x onerror=alert(1)>',
    "</textarea><svg onload=alert(1)>",
    "{{7*7}}{% raw %}",
    "javascript:alert(1)",
    "'; DROP TABLE samples; --",
    "=HYPERLINK(\"http://evil\")",
]
UNICODE = "Ωμέγα 漢字 Jürgen Ñandú 🩸"


def _new_sample(s, base, **fields):
    page = s.get(base + "/")
    data = {"csrf_token": csrf_of(page.text), "sample_code": "S", **fields}
    return s.post(base + "/samples", data=data)


def test_xss_payloads_come_back_escaped_in_pages_csv_and_pdf(page_app, admin):
    from pypdf import PdfReader

    base, app, rt, _ = page_app
    s = admin
    for i, payload in enumerate(XSS):
        r = _new_sample(s, base, sample_code=f"{payload}-{i}", patient_name=payload, note=payload)
        assert r.status_code == 200, (payload, r.status_code)
        sid = r.url.rstrip("/").split("/")[-1]
        token = csrf_of(r.text)
        s.post(f"{base}/samples/{sid}/capture", headers={"X-CSRFToken": token, "Accept": "application/json"})
        s.post(f"{base}/samples/{sid}/finish", data={"csrf_token": token, "confirmed": "1"})
        pages = [s.get(base + p).text for p in ("/", f"/samples/{sid}", f"/samples/{sid}/review",
                                                 "/history", "/history?q=" + payload[:20], "/audit")]
        for text in pages:
            assert payload not in text or payload == str(escape(payload)), payload
            assert "<script>alert" not in text and "<img src=x" not in text and "<svg onload" not in text
        assert str(escape(payload)) in pages[1]  # shown, as text
        if "{{" in payload:
            assert "49" not in re.findall(r"\d+", pages[1].split("Result")[1][:200])  # no template evaluation
        pdf = s.get(f"{base}/samples/{sid}/report.pdf")
        assert pdf.headers["Content-Type"] == "application/pdf"
        text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.content)).pages)
        assert payload.replace("\n", " ") in text.replace("\n", " "), payload  # shown literally, never interpreted
        csv_text = s.get(f"{base}/samples/{sid}/cells.csv").text
        if payload.startswith("="):
            assert "\n=" not in csv_text and ",=" not in csv_text  # no spreadsheet formula
        disposition = pdf.headers["Content-Disposition"]
        assert re.fullmatch(r'attachment; filename=leukoscope-[A-Za-z0-9._-]+\.pdf', disposition), disposition


def test_unicode_and_oversized_fields(page_app, admin):
    from pypdf import PdfReader

    base, app, rt, _ = page_app
    s = admin
    r = _new_sample(s, base, sample_code="U-1", patient_name=UNICODE, note=UNICODE)
    assert r.status_code == 200 and str(escape(UNICODE)) in r.text
    sid = r.url.rstrip("/").split("/")[-1]
    pdf = s.get(f"{base}/samples/{sid}/report.pdf")
    assert pdf.status_code == 200  # characters outside the PDF font become '?', never a 500
    assert "Jürgen Ñandú" in PdfReader(io.BytesIO(pdf.content)).pages[0].extract_text()
    r = _new_sample(s, base, sample_code="U-2", note="x" * 100_000)
    assert r.status_code == 400 and "longer than" in r.text
    r = _new_sample(s, base, sample_code="U-3", patient_age="forty")
    assert "whole number" in r.text
    r = _new_sample(s, base, sample_code="U-4\x00\x01", patient_name="a\x00b")
    assert r.status_code in (200, 400)
    r = _new_sample(s, base, sample_code="   ")
    assert "required" in r.text
    r = s.get(base + "/history?from=yesterday")
    assert r.status_code == 400
    r = s.get(base + "/history?q=" + "%" * 5000)
    assert r.status_code == 200


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One real server (and a signed-in session) for the raw paths below: they only read, and a client
    library would normalise them, so they go over a real socket."""
    from testkit.web import serving

    with serving(tmp_path_factory.mktemp("raw-paths")) as (base, app, rt):
        yield base, signed_in(base)


@pytest.mark.parametrize("path", [
    "/static/../device/config.py", "/static/%2e%2e/%2e%2e/etc/passwd", "/static/..%2f..%2fleukoscope.db",
    "/cells/..%2f..%2fleukoscope.db.jpg", "/samples/1/fields/../../leukoscope.db", "/samples/1/cells.../../db",
    "/cells/-1.jpg", "/samples/1/fields/1.jpg/../../../secret_key", "//etc/passwd", "/%2e%2e/secret_key",
])
def test_path_traversal_is_refused(served, path):
    import http.client

    base, s = served
    host = base.split("//")[1]
    conn = http.client.HTTPConnection(host, timeout=10)
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    conn.request("GET", path, headers={"Cookie": cookie})  # sent as written, not normalised by a client
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status in (400, 404), (path, resp.status)
    assert b"secret" not in body.lower() and b"SQLite format" not in body and b"root:" not in body


def test_a_database_row_cannot_serve_a_file_outside_the_data_folder(page_app, admin):
    base, app, rt, _ = page_app
    s = admin
    r = _new_sample(s, base, sample_code="T-1")
    sid = int(r.url.rstrip("/").split("/")[-1])
    with rt.store.transaction() as tx:
        tx.execute("INSERT INTO fields (sample_id, image_path, captured_at, width, height, qc_ok, qc_message, qc_json) "
                   "VALUES (?, '../../../etc/passwd', 'now', 1, 1, 1, 'ok', '{}')", (sid,))
        fid = tx.execute("SELECT MAX(id) FROM fields").fetchone()[0]
    r = s.get(f"{base}/samples/{sid}/fields/{fid}.jpg")
    assert r.status_code == 404 and "root:" not in r.text
